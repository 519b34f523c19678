using System.Diagnostics;
using Grpc.Core;
using Merlin.Client;
using Merlin.Kubernetes.ApiServer;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.Lab;
using Merlin.Lab.Server;
using Merlin.Testing;
using k8s;
using k8s.Models;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Kubernetes.Tests.Lab;

/// <summary>
/// The issue's lab scenario with real traffic, in a <see cref="KubernetesLab"/>: two real merlin daemons (nftables DSR, one etcd) in lab load
/// balancers, four lab hosts as the cluster's nodes (the VIPs on their lo, as kube-proxy accepts a load-balancer IP),
/// the Kubernetes API test server, two controller replicas in this process talking to Merlin over lb1's Unix socket
/// (no test address is touched from the root namespace), and kubectl. A Service applied with kubectl gets an
/// address and is reachable through it, spread over the nodes; ETP Local sends only to nodes with endpoints, in
/// proportion; a node marked for deletion keeps its open connections; a killed leader's replica takes over with
/// nothing reallocated; deleting the Service removes it from Merlin and frees the address.
/// </summary>
public sealed class KubernetesLabTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void Log(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    private const string ServiceYaml = """
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: default
        spec:
          type: LoadBalancer
          loadBalancerClass: merlin.io/lb
          selector: {app: web}
          ports:
          - {name: http, port: 80, targetPort: 80, protocol: TCP}
          - {name: echo, port: 9000, targetPort: 9000, protocol: TCP}
        """;

    [Fact]
    public async Task Service_AppliedWithKubectl_IsReachableThroughItsVip_AndFollowsTheCluster()
    {
        KubernetesLab.Require();
        await using var kl = await KubernetesLab.StartAsync(Ct);
        var (lab, lb1, lb2, api, kubectl, k, merlin, logs) = (kl.Lab, kl.Lb1, kl.Lb2, kl.Api, kl.Kubectl, kl.Kube, kl.MerlinApi, kl.Logs);

        // Two replicas.
        var a = kl.Replica("a");
        using var stopA = new CancellationTokenSource();
        var runA = Task.Run(() => a.RunAsync(stopA.Token), Ct);
        await Eventually(() => a.Leading, "replica a to lead");
        var b = kl.Replica("b");
        using var stopB = new CancellationTokenSource();
        var runB = Task.Run(() => b.RunAsync(stopB.Token), Ct);
        try
        {
            // 1. kubectl apply → status → reachable, spread over the four nodes.
            var clock = Stopwatch.StartNew();
            await kubectl.OkAsync("apply", "-f", kubectl.File("web.yaml", ServiceYaml));
            var svc = await EventuallyGet(k, s => s.Status?.LoadBalancer?.Ingress?.Count > 0, "an address in status");
            var toStatus = clock.Elapsed;
            Assert.Equal(lab.VipsV4[0].ToString(), svc.Status.LoadBalancer.Ingress[0].Ip);
            Assert.Equal("VIP", svc.Status.LoadBalancer.Ingress[0].IpMode);
            var yaml = await kubectl.OkAsync("get", "svc", "web", "-o", "yaml");
            Assert.Contains($"ip: {lab.VipsV4[0]}", yaml);
            await Eventually(async () => (await merlin.ListAsync(new(), cancellationToken: Ct)).Items.Sum(i => i.Servers.Count) == 8, "both Merlin services with four servers each", seconds: 30);
            var toMerlin = clock.Elapsed;
            // Reachable: the first request through the VIP that is answered (each try is a short-lived client process).
            for (var tries = 0; (await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 1, Timeout = TimeSpan.FromMilliseconds(200) }, Ct)).Successes == 0; tries++)
                Assert.True(tries < 100, "the VIP never answered");
            Log($"kubectl apply → status {toStatus.TotalMilliseconds:0} ms, → Merlin written {toMerlin.TotalMilliseconds:0} ms, → reachable {clock.Elapsed.TotalMilliseconds:0} ms");
            await lb1.WaitProgrammedAsync(2, 8, ct: Ct);
            await lb2.WaitProgrammedAsync(2, 8, ct: Ct);
            var spread = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 400, Concurrency = 4 }, Ct);
            Log("spread: " + string.Join(", ", spread.PerServer.Select(p => $"{p.Key}={p.Value}")));
            Assert.True(spread.Successes >= 396, "spread: " + string.Join(", ", spread.Errors.Select(e => $"{e.Key} {e.Value}")));
            Assert.Equal(["rs1", "rs2", "rs3", "rs4"], spread.PerServer.Keys);
            Assert.All(spread.PerServer.Values, n => Assert.InRange(n, 50, 150));

            // 2. node1 is marked for deletion by the autoscaler: drained — its open connections stay, new ones avoid it.
            await using (var hold = lab.Client.StartHold(lab.VipEndpoint(Merlin.Lab.Lab.EchoPort), new LabHoldOptions { Connections = 8, Only = "rs1", Duration = TimeSpan.FromSeconds(5), MaxAttempts = 300 }))
            {
                await hold.WaitConnectedAsync(ct: Ct);
                await k.CoreV1.PatchNodeAsync(new V1Patch($$$"""{"spec":{"taints":[{"key":"{{{Annotations.ToBeDeletedTaint}}}","effect":"NoSchedule"}]}}""", V1Patch.PatchType.MergePatch), "node1", cancellationToken: Ct);
                await Eventually(async () => (await merlin.ListAsync(new(), cancellationToken: Ct)).Items.SelectMany(i => i.Servers).Count(s => s.Key.Ip == lab["rs1"].Address.ToString() && s.DrainDeadline is not null) == 2, "node1 draining in Merlin");
                // The daemons program the drain (weight 0) after the store says so: wait until new requests stop reaching rs1.
                await UntilOnly(lab, ["rs2", "rs3", "rs4"], "the drain programmed on lb1");
                var fresh = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 150, Concurrency = 4 }, Ct);
                Assert.True(fresh.Successes >= 148, "after the drain: " + string.Join(", ", fresh.Errors.Select(e => $"{e.Key} {e.Value}")));
                Assert.DoesNotContain("rs1", fresh.PerServer.Keys);
                var held = await hold.ReportAsync(Ct);
                Assert.True(held.Survived == 8, "held connections on the drained node: " + ReportJson.Write(held));
            }

            // 3. The leader stops (as on SIGTERM: it hands the lease back); b takes over and reallocates nothing.
            stopA.Cancel();
            await runA;
            await Eventually(() => b.Leading && b.Controller.FirstSyncDone, "replica b to lead and sync");
            Assert.Equal(lab.VipsV4[0].ToString(), (await k.CoreV1.ReadNamespacedServiceAsync("web", "default", cancellationToken: Ct)).Status.LoadBalancer.Ingress[0].Ip);

            // 4. externalTrafficPolicy Local: only nodes with ready endpoints, by their counts (node2: 3, node3: 1).
            await k.CoreV1.PatchNamespacedServiceAsync(new V1Patch("""{"spec":{"externalTrafficPolicy":"Local"}}""", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: Ct);
            var hcnp = (await k.CoreV1.ReadNamespacedServiceAsync("web", "default", cancellationToken: Ct)).Spec.HealthCheckNodePort!.Value;
            foreach (var rs in lab.RealServers) // kube-proxy's health check node port, served on every node
                await rs.StartServerAsync(new LabServerOptions { HttpPort = hcnp, EchoPort = hcnp + 1, UdpPort = hcnp + 1 }, Ct);
            await k.DiscoveryV1.CreateNamespacedEndpointSliceAsync(new V1EndpointSlice
            {
                Metadata = new V1ObjectMeta { Name = "web-x", NamespaceProperty = "default", Labels = new Dictionary<string, string> { [Annotations.ServiceNameLabel] = "web" } },
                AddressType = "IPv4",
                Endpoints =
                [
                    new V1Endpoint { Addresses = ["198.19.0.1"], NodeName = "node2" },
                    new V1Endpoint { Addresses = ["198.19.0.2"], NodeName = "node2" },
                    new V1Endpoint { Addresses = ["198.19.0.3"], NodeName = "node2" },
                    new V1Endpoint { Addresses = ["198.19.0.4"], NodeName = "node3" },
                ],
            }, "default", cancellationToken: Ct);
            await Eventually(async () => (await merlin.ListAsync(new(), cancellationToken: Ct)).Items.Single(i => i.Service.Id == "k8s-default.web.tcp-80").Servers
                .Where(s => s.DrainDeadline is null).Select(s => $"{s.Key.Ip}={s.Config.Weight}").Order().SequenceEqual(new[] { $"{lab["rs2"].Address}=3", $"{lab["rs3"].Address}=1" }), "weights 3 and 1");
            await UntilOnly(lab, ["rs2", "rs3"], "the ETP Local weights programmed on lb1");
            // Source ports below the kernel's ephemeral range (32768-60999): no earlier connection of this test used one, so
            // no flow the load balancer still pins from before (to a node now drained) shares a 5-tuple with these.
            var local = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 800, Concurrency = 4, SourcePorts = (20000, 20799), Flows = true }, Ct);
            Log("ETP Local: " + string.Join(", ", local.PerServer.Select(p => $"{p.Key}={p.Value}")) + (local.Failures > 0 ? $"; failed: {string.Join(", ", local.Errors.Select(e => $"{e.Key} {e.Value}"))}" : ""));
            // Under a loaded CI machine a request may time out (the client waits 2 s); none may reach a node without endpoints.
            Assert.True(local.Successes >= 792, "ETP Local: " + string.Join(", ", local.Errors.Select(e => $"{e.Key} {e.Value}")));
            Assert.Equal(["rs2", "rs3"], local.PerServer.Keys);
            Assert.InRange(local.PerServer["rs2"] / (double)local.Successes, 0.65, 0.85);

            // 5. Deleted: Merlin forgets it on both load balancers and the address is free again.
            await kubectl.OkAsync("delete", "-f", kubectl.File("web.yaml", ServiceYaml));
            await Eventually(async () => (await merlin.ListAsync(new(), cancellationToken: Ct)).Items.Count == 0, "no Merlin services");
            await lb1.WaitProgrammedAsync(0, 0, ct: Ct);
            await lb2.WaitProgrammedAsync(0, 0, ct: Ct);
            var gone = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 3, Timeout = TimeSpan.FromMilliseconds(500) }, Ct);
            Assert.Equal(0, gone.Successes);
            await Eventually(() => api.Get<V1IPPool>("merlin.io/v1", "IPPool", null, "lab")?.Status is { Used: 0, Total: 2 }, "the pool's address free");
        }
        catch
        {
            Log(logs.Text);
            Log(await lab.DescribeAsync());
            throw;
        }
        finally
        {
            stopA.Cancel();
            stopB.Cancel();
            await Task.WhenAll(runA, runB);
        }
    }

    /// <summary>
    /// The issue's latency goals as a repeated measurement (no timing is asserted: a loaded CI machine is not a failure):
    /// one Service at a time is created through the client library, and the time to an address in its status and to
    /// the first answer through that address is logged; then it is deleted and gone from both daemons before the next.
    /// MERLIN_K8S_LAB_REPEAT sets the count (default 3); docs/performance.md has a run of 50. Reachability is found by
    /// one-request client processes with a 200 ms timeout, so that figure is coarse by up to a try's length.
    /// </summary>
    [Fact]
    public async Task ServicesCreatedOneAfterAnother_EachGetsAnAddressAndAnswersThroughIt()
    {
        KubernetesLab.Require();
        var repeat = int.TryParse(Environment.GetEnvironmentVariable("MERLIN_K8S_LAB_REPEAT"), out var n) && n > 0 ? n : 3;
        await using var kl = await KubernetesLab.StartAsync(Ct);
        var replica = kl.Replica("a");
        using var stop = new CancellationTokenSource();
        var run = Task.Run(() => replica.RunAsync(stop.Token), Ct);
        var toStatus = new List<double>();
        var toReachable = new List<double>();
        try
        {
            await Eventually(() => replica.Leading && replica.Controller.FirstSyncDone, "the replica to lead");
            for (var i = 0; i < repeat; i++)
            {
                var name = $"web-{i}";
                var clock = Stopwatch.StartNew();
                await kl.Kube.CoreV1.CreateNamespacedServiceAsync(new V1Service
                {
                    Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" },
                    Spec = new V1ServiceSpec
                    {
                        Type = "LoadBalancer", LoadBalancerClass = Annotations.LoadBalancerClass, Selector = new Dictionary<string, string> { ["app"] = "web" },
                        Ports = [new V1ServicePort { Name = "http", Port = 80, TargetPort = 80, Protocol = "TCP" }],
                    },
                }, "default", cancellationToken: Ct);
                await Eventually(async () => (await kl.Kube.CoreV1.ReadNamespacedServiceAsync(name, "default", cancellationToken: Ct)).Status?.LoadBalancer?.Ingress?.Count > 0, "an address in status", pollMs: 10);
                toStatus.Add(clock.Elapsed.TotalMilliseconds);
                for (var tries = 0; (await kl.Lab.Client.HttpAsync(kl.Lab.VipEndpoint(), new LabRequestOptions { Count = 1, Timeout = TimeSpan.FromMilliseconds(200) }, Ct)).Successes == 0; tries++)
                    Assert.True(tries < 100, $"{name}: the VIP never answered");
                toReachable.Add(clock.Elapsed.TotalMilliseconds);
                Log($"{name}: created → status {toStatus[^1]:0} ms, → reachable {toReachable[^1]:0} ms");

                await kl.Kube.CoreV1.DeleteNamespacedServiceAsync(name, "default", cancellationToken: Ct);
                await Eventually(async () => (await kl.MerlinApi.ListAsync(new(), cancellationToken: Ct)).Items.Count == 0, $"{name} gone from Merlin");
                await kl.Lb1.WaitProgrammedAsync(0, 0, ct: Ct);
                await kl.Lb2.WaitProgrammedAsync(0, 0, ct: Ct);
            }
            Log($"{repeat} Services: created → status {Summary(toStatus)}; → reachable {Summary(toReachable)}");
        }
        catch
        {
            Log(kl.Logs.Text);
            Log(await kl.Lab.DescribeAsync());
            throw;
        }
        finally
        {
            stop.Cancel();
            await run;
        }
    }

    private static string Summary(List<double> ms)
    {
        var sorted = ms.Order().ToList();
        double P(double q) => sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(q * sorted.Count) - 1)];
        return $"p50 {P(0.5):0} ms, p99 {P(0.99):0} ms, max {sorted[^1]:0} ms";
    }

    // Small batches of requests until every answer comes from the given servers (bounded: 30 s).
    private static async Task UntilOnly(Merlin.Lab.Lab lab, string[] servers, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var probe = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 20, Concurrency = 4 }, Ct);
            if (probe.Successes > 0 && probe.PerServer.Keys.All(servers.Contains)) return;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 30 s for {what}; last answers: {string.Join(", ", probe.PerServer.Select(p => $"{p.Key}={p.Value}"))}");
            await Task.Delay(200, Ct);
        }
    }

    private static async Task<V1Service> EventuallyGet(IKubernetes k, Func<V1Service, bool> done, string what)
    {
        V1Service? svc = null;
        await Eventually(async () => done(svc = await k.CoreV1.ReadNamespacedServiceAsync("web", "default", cancellationToken: Ct)), what);
        return svc!;
    }

    private static Task Eventually(Func<bool> condition, string what) => Eventually(() => Task.FromResult(condition()), what);

    private static Task Eventually(Func<Task<bool>> condition, string what, int seconds = 30, int pollMs = 100) =>
        Poll.UntilAsync(condition, what, TimeSpan.FromSeconds(seconds), interval: TimeSpan.FromMilliseconds(pollMs), ct: Ct);
}
