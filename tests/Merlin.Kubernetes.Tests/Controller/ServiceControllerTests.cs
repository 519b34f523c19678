using k8s;
using k8s.Models;
using Merlin.Kubernetes.Mapping;
using Merlin.Contracts;
using static Merlin.Kubernetes.Tests.Controller.ControllerCluster;

namespace Merlin.Kubernetes.Tests.Controller;

/// <summary>The controller end to end: Services made with the official client on the Kubernetes API test server, the
/// real merlin daemon programmed through its API, and what a user sees in status, events and Merlin.</summary>
public class ServiceControllerTests
{
    private const string WebId = "k8s-default.web.tcp-80";

    private static async Task<ControllerCluster> ClusterWithNodesAsync()
    {
        var c = await ControllerCluster.StartAsync();
        c.Pool("default", "198.18.100.10-198.18.100.20");
        c.Node("n1", "127.0.0.11");
        c.Node("n2", "127.0.0.12");
        c.Node("n3", "127.0.0.13");
        return c;
    }

    private static List<RealServer> Serving(ListResponse.Types.Item item) => item.Servers.Where(s => s.DrainDeadline is null).ToList();

    private static string Servers(ListResponse.Types.Item item) =>
        string.Join(" ", item.Servers.OrderBy(s => s.Key.Ip).Select(s => $"{s.Key.Ip}:{s.Key.Port}={s.Config.Weight}{(s.DrainDeadline is null ? "" : "(draining)")}"));

    [Fact]
    public async Task Service_Created_GetsAnAddress_MerlinServesItOnEveryReadyNode_DeleteRemovesAll()
    {
        await using var c = await ClusterWithNodesAsync();
        c.StartReplica("a");
        c.Service("web");

        var svc = await c.ServiceStatusAsync("web", s => Ingress(s) is not null && s.Status.Conditions?.Any(x => x.Type == Annotations.ConditionType && x.Status == "True") == true, "an address and a ready condition");
        Assert.Equal("198.18.100.10", Ingress(svc));
        Assert.Equal("VIP", svc.Status.LoadBalancer.Ingress[0].IpMode);
        Assert.Contains(Annotations.Finalizer, svc.Metadata.Finalizers);
        var item = await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => i.Servers.Count == 3, "three servers in Merlin");
        Assert.Equal(("198.18.100.10", 80u, Protocol.Tcp, "mh"), (item.Service.Key.Ip, item.Service.Key.Port, item.Service.Key.Protocol, item.Service.Config.Scheduler));
        Assert.Equal("127.0.0.11:80=1 127.0.0.12:80=1 127.0.0.13:80=1", Servers(item));
        Assert.All(item.Servers, s => Assert.Equal(ForwardMethod.Route, s.Config.Forward));
        var events = await EventuallyAsync(async () => (await c.Kube.CoreV1.ListNamespacedEventAsync("default", cancellationToken: TestContext.Current.CancellationToken)).Items, e => e.Any(x => x.Reason == "IPAllocated"), "an IPAllocated event");
        Assert.Contains(events, e => e.Reason == "IPAllocated" && e.Message.Contains("198.18.100.10") && e.InvolvedObject.Name == "web");

        await c.Kube.CoreV1.DeleteNamespacedServiceAsync("web", "default", cancellationToken: TestContext.Current.CancellationToken);
        await EventuallyAsync(async () => (object?)(c.GetService("web") is null && await c.MerlinServiceAsync(WebId) is null ? "gone" : null), _ => true, "the Service and its Merlin service gone");
        await EventuallyAsync(() => Task.FromResult(c.Api.Get<Merlin.Kubernetes.Kube.V1IPPool>("merlin.io/v1", "IPPool", null, "default")), p => p.Status?.Used == 0 && p.Status.Total == 11, "the pool's status to show the address free");
    }

    [Fact]
    public async Task Nodes_NotReadyOrRemoved_AreDrainedNotCut_NewNodeJoins_LocalPolicyWeighsByEndpoints()
    {
        await using var c = await ClusterWithNodesAsync();
        c.StartReplica("a");
        c.Service("web");
        await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => i.Servers.Count == 3, "three servers");

        c.Node("n3", "127.0.0.13", ready: false);
        c.Api.Delete("v1", "Node", null, "n2");
        c.Node("n4", "127.0.0.14");
        var item = await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => Servers(i) == "127.0.0.11:80=1 127.0.0.12:80=1(draining) 127.0.0.13:80=1(draining) 127.0.0.14:80=1", "n2, n3 draining and n4 added");
        Assert.True(item.Servers.Single(s => s.Key.Ip == "127.0.0.13").DrainDeadline.ToDateTimeOffset() > DateTimeOffset.UtcNow.AddSeconds(30));

        // externalTrafficPolicy Local: only nodes with ready endpoints, weighted by how many; n3 comes back Ready and is undrained.
        c.Node("n3", "127.0.0.13");
        var svc = c.GetService("web")!;
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        await c.Kube.DiscoveryV1.CreateNamespacedEndpointSliceAsync(new V1EndpointSlice
        {
            Metadata = new V1ObjectMeta { Name = "web-1", NamespaceProperty = "default", Labels = new Dictionary<string, string> { [Annotations.ServiceNameLabel] = "web" } },
            AddressType = "IPv4",
            Endpoints =
            [
                new V1Endpoint { Addresses = ["198.19.0.1"], NodeName = "n1", Conditions = new V1EndpointConditions { Ready = true } },
                new V1Endpoint { Addresses = ["198.19.0.2"], NodeName = "n1", Conditions = new V1EndpointConditions { Ready = true } },
                new V1Endpoint { Addresses = ["198.19.0.3"], NodeName = "n3", Conditions = new V1EndpointConditions { Ready = true } },
                new V1Endpoint { Addresses = ["198.19.0.4"], NodeName = "n4", Conditions = new V1EndpointConditions { Ready = false } },
            ],
        }, "default", cancellationToken: TestContext.Current.CancellationToken);
        // Servers are updated one by one: the weights can be final while a server's health check is still to come.
        item = await EventuallyAsync(() => c.MerlinServiceAsync(WebId),
            i => Servers(i) == "127.0.0.11:80=2 127.0.0.12:80=1(draining) 127.0.0.13:80=1 127.0.0.14:80=1(draining)"
                 && i.Servers.Where(s => s.DrainDeadline is null).All(s => s.HealthCheck?.Endpoint == $"http://:{c.GetService("web")!.Spec.HealthCheckNodePort}/healthz"),
            "weights 2 and 1, n4 (no ready endpoint) draining, the serving nodes health-checked");
        var port = c.GetService("web")!.Spec.HealthCheckNodePort;
        Assert.All(item.Servers.Where(s => s.DrainDeadline is null), s => Assert.Equal($"http://:{port}/healthz", s.HealthCheck.Endpoint));
    }

    [Fact]
    public async Task WithGoMerlinCompatibility_ALeavingNodeGetsWeightZero_AndIsDeletedAfterTheDrainPeriod()
    {
        await using var c = await ClusterWithNodesAsync();
        await c.Merlin.UpdateSettingsAsync(new Settings { Compatibility = Merlin.Model.GoMerlin.Mode }, cancellationToken: TestContext.Current.CancellationToken);
        c.StartReplica("a", ControllerCluster.Options with { DrainPeriod = TimeSpan.FromSeconds(2) });
        c.Service("web");
        await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => i.Servers.Count == 3, "three servers"); // nothing merlin-k8s writes is refused

        // Merlin refuses the drain (a Go merlin would ignore its deadline): weight 0 instead, nothing cut.
        c.Node("n3", "127.0.0.13", ready: false);
        await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => Servers(i) == "127.0.0.11:80=1 127.0.0.12:80=1 127.0.0.13:80=0", "n3 at weight 0");
        await Task.Delay(TimeSpan.FromSeconds(2.5), TestContext.Current.CancellationToken);
        c.Node("n4", "127.0.0.14"); // the next pass after the drain period deletes it
        await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => Servers(i) == "127.0.0.11:80=1 127.0.0.12:80=1 127.0.0.14:80=1", "n3 deleted, n4 added");
        Assert.Single(c.Logs.Lines, l => l.Contains("Merlin refuses drains"));
    }

    [Fact]
    public async Task Edits_AreHonoured_BadInputChangesNothing_AndIsNamed()
    {
        await using var c = await ClusterWithNodesAsync();
        c.StartReplica("a");
        c.Service("web");
        await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => i.Servers.Count == 3, "three servers");

        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/scheduler\":\"sh\",\"merlin.io/flags\":\"sh-port\",\"merlin.io/load-balancer-ips\":\"198.18.100.15\"}}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        var moved = await c.ServiceStatusAsync("web", s => Ingress(s) == "198.18.100.15", "the requested address");
        var item = await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => i.Service.Key.Ip == "198.18.100.15" && i.Service.Config.Scheduler == "sh" && i.Servers.Count == 3, "the VIP moved and the scheduler changed");

        // NAT: masquerade to each node's node port, and the status says packets arrive proxied. The servers on the
        // service port are drained (their connections came by direct return), not cut.
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/forwarding\":\"nat\"}}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        var nodePort = (uint)c.GetService("web")!.Spec.Ports[0].NodePort!.Value;
        var nat = await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => Serving(i).Count == 3 && Serving(i).All(s => s.Config.Forward == ForwardMethod.Masq && s.Key.Port == nodePort)
            && i.Servers.Count(s => s.DrainDeadline is not null && s.Key.Port == 80) == 3, "masq to the node port, the direct-return servers draining");
        await c.ServiceStatusAsync("web", s => s.Status.LoadBalancer.Ingress[0].IpMode == "Proxy", "ipMode Proxy");
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/forwarding\":null}}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        item = await EventuallyAsync(() => c.MerlinServiceAsync(WebId), i => Serving(i).Count == 3 && Serving(i).All(s => s.Config.Forward == ForwardMethod.Route && s.Key.Port == 80), "back to direct return on port 80");

        // An invalid annotation and an address outside every pool: an event and a condition name them; nothing else changes.
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/forwarding\":\"carrier-pigeon\"}}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        var bad = await c.ServiceStatusAsync("web", s => s.Status.Conditions?.Any(x => x.Reason == "InvalidRequest") == true, "an InvalidRequest condition");
        Assert.Contains("annotation merlin.io/forwarding: \"carrier-pigeon\" is not route or nat", bad.Status.Conditions!.Single(x => x.Type == Annotations.ConditionType).Message);
        Assert.Equal("198.18.100.15", Ingress(bad));
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/forwarding\":null,\"merlin.io/load-balancer-ips\":\"198.18.200.1\"}}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        bad = await c.ServiceStatusAsync("web", s => s.Status.Conditions?.Any(x => x.Reason == "AddressNotInPool") == true, "an AddressNotInPool condition");
        Assert.Equal("198.18.100.15", Ingress(bad));
        var events = (await c.Kube.CoreV1.ListNamespacedEventAsync("default", cancellationToken: TestContext.Current.CancellationToken)).Items;
        Assert.Contains(events, e => e.Reason == "AddressNotInPool" && e.Message.Contains("198.18.200.1 is in no IPPool"));
        Assert.Equal(Servers(item), Servers((await c.MerlinServiceAsync(WebId))!));

        // Ports changed: the removed port's Merlin service goes, the new one comes.
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"metadata\":{\"annotations\":{\"merlin.io/load-balancer-ips\":\"198.18.100.15\"}},\"spec\":{\"ports\":[{\"name\":\"https\",\"port\":443,\"protocol\":\"TCP\",\"targetPort\":8443}]}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        await EventuallyAsync(async () => (object?)((await c.ListMerlinAsync()).Items.Select(i => i.Service.Id).SequenceEqual(["k8s-default.web.tcp-443"]) ? "yes" : null), _ => true, "only the 443 service in Merlin");

        // Type changed to ClusterIP: its Merlin services go and the address is released.
        await c.Kube.CoreV1.PatchNamespacedServiceAsync(new V1Patch("{\"spec\":{\"type\":\"ClusterIP\",\"loadBalancerClass\":null,\"externalTrafficPolicy\":null}}", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: TestContext.Current.CancellationToken);
        var plain = await c.ServiceStatusAsync("web", s => Ingress(s) is null && s.Metadata.Finalizers?.Contains(Annotations.Finalizer) != true, "the address released and the finalizer removed");
        Assert.Empty((await c.ListMerlinAsync()).Items);
        Assert.Equal("ClusterIP", plain.Spec.Type);
    }

    [Fact]
    public async Task Sharing_SameKeyDifferentPorts_OneAddress_ClashingPortsRefused()
    {
        await using var c = await ClusterWithNodesAsync();
        c.StartReplica("a");
        var share = new Dictionary<string, string> { [Annotations.SharingKey] = "edge" };
        c.Service("web", s => s.Metadata.Annotations = share);
        c.Service("dns", s => { s.Metadata.Annotations = share; s.Spec.Ports = [new V1ServicePort { Name = "dns", Port = 53, Protocol = "UDP", TargetPort = 53 }]; });
        var web = await c.ServiceStatusAsync("web", s => Ingress(s) is not null, "web's address");
        var dns = await c.ServiceStatusAsync("dns", s => Ingress(s) is not null, "dns's address");
        Assert.Equal(Ingress(web), Ingress(dns));
        await EventuallyAsync(() => c.MerlinServiceAsync("k8s-default.dns.udp-53"), i => i.Service.Key.Ip == Ingress(web) && i.Servers.Count == 3, "dns in Merlin on the shared address");

        // Same key, same port, asking for the shared address: refused, with the reason.
        c.Service("web2", s => s.Metadata.Annotations = new Dictionary<string, string>(share) { [Annotations.Ips] = Ingress(web)! });
        var refused = await c.ServiceStatusAsync("web2", s => s.Status?.Conditions?.Any(x => x.Reason == "AddressInUse") == true, "AddressInUse");
        Assert.Contains("already uses TCP/80", refused.Status.Conditions!.Single(x => x.Type == Annotations.ConditionType).Message);
        Assert.Null(Ingress(refused));
    }

    [Fact]
    public async Task LeaderStopped_HandsTheLeaseBack_OtherReplicaTakesOver_NothingReallocated_OrphansSwept()
    {
        await using var c = await ClusterWithNodesAsync();
        // A Merlin service under our prefix that no Service owns (left while the controller was down).
        await c.Merlin.CreateServiceAsync(new VirtualService
        {
            Id = "k8s-default.ghost.tcp-80",
            Key = new VirtualService.Types.Key { Ip = "198.18.100.99", Port = 80, Protocol = Protocol.Tcp },
            Config = new VirtualService.Types.Config { Scheduler = "mh" },
        }, cancellationToken: TestContext.Current.CancellationToken);
        var a = c.StartReplica("a");
        await EventuallyAsync(() => Task.FromResult<object?>(a.Leading ? "yes" : null), _ => true, "replica a to lead");
        var b = c.StartReplica("b");
        for (var i = 0; i < 5; i++) c.Service($"s{i}");
        var before = new Dictionary<string, string?>();
        for (var i = 0; i < 5; i++) before[$"s{i}"] = Ingress(await c.ServiceStatusAsync($"s{i}", s => Ingress(s) is not null, $"s{i}'s address"));
        Assert.Equal(5, before.Values.Distinct().Count());
        await EventuallyAsync(async () => (object?)(await c.MerlinServiceAsync("k8s-default.ghost.tcp-80") is null ? "swept" : null), _ => true, "the orphan swept");
        Assert.False(b.Leading);

        await c.StopReplicaAsync(a);
        // a handed the lease back on its way out (it runs out in a second), unless b has taken it already.
        var lease = await c.Kube.CoordinationV1.ReadNamespacedLeaseAsync("merlin-k8s", "merlin-system", cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(lease.Spec.HolderIdentity == "b" || (string.IsNullOrEmpty(lease.Spec.HolderIdentity) && lease.Spec.LeaseDurationSeconds == 1),
            $"lease after a stopped: holder \"{lease.Spec.HolderIdentity}\", {lease.Spec.LeaseDurationSeconds} s");
        await EventuallyAsync(() => Task.FromResult<object?>(b.Leading ? "yes" : null), _ => true, "replica b to take over");
        await EventuallyAsync(() => Task.FromResult<object?>(b.Controller.FirstSyncDone ? "yes" : null), _ => true, "b's first full sync");
        for (var i = 0; i < 5; i++) Assert.Equal(before[$"s{i}"], Ingress(c.GetService($"s{i}")!));
        c.Service("s5");
        var fresh = Ingress(await c.ServiceStatusAsync("s5", s => Ingress(s) is not null, "s5's address"));
        Assert.DoesNotContain(fresh, before.Values);
        // The status is written before Merlin is: wait for s5's Merlin service too.
        await EventuallyAsync(async () => (object?)((await c.ListMerlinAsync()).Items.Count(i => i.Service.Id.StartsWith("k8s-", StringComparison.Ordinal)) == 6 ? "yes" : null), _ => true, "six Merlin services");
    }
}
