using System.Net;
using System.Text.Json;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.Kubernetes.Tests.Controller;
using Merlin.Testing;
using Merlin.Contracts;
using k8s;
using k8s.Autorest;
using k8s.Models;
using static Merlin.Kubernetes.Tests.Controller.ControllerCluster;

namespace Merlin.Kubernetes.Tests.RealApiServer;

/// <summary>
/// The optional suite against a real kube-apiserver (envtest's binaries, see <see cref="KubeApiServerProcess"/>): the
/// CRD as shipped, a Node, an IPPool and a Service of class merlin.io/lb, one controller replica and the real merlin
/// daemon (in process, SQLite, no dataplane). It runs only where KUBEBUILDER_ASSETS names a directory holding etcd and
/// kube-apiserver; without it the test skips, in CI too, because no such binaries can be installed on the CI host.
/// </summary>
public sealed class RealApiServerTests
{
    private const string WebId = "k8s-default.web.tcp-80";

    [Fact]
    public async Task Service_GetsThePoolsFirstAddress_MerlinServesItOnTheNode_DeleteRemovesBoth()
    {
        var assets = AssetsOrSkip();
        var ct = TestContext.Current.CancellationToken;
        await using var plane = await KubeApiServerProcess.StartAsync(assets, ct);
        try
        {
            await ServiceLifecycleAsync(plane.ClientConfiguration(), ct);
        }
        catch
        {
            // What the API server said is often the reason (a rejected status write, a validation message).
            TestContext.Current.TestOutputHelper?.WriteLine(plane.Log);
            throw;
        }
    }

    private static async Task ServiceLifecycleAsync(KubernetesClientConfiguration config, CancellationToken ct)
    {
        using var kube = new k8s.Kubernetes(config);

        // The CRD exactly as deploy/kubernetes ships it: a real API server validates its schema, which the test server does not.
        var crd = KubernetesYaml.Deserialize<V1CustomResourceDefinition>(File.ReadAllText(Path.Combine(Repository.Root, "deploy", "kubernetes", "crd-ippool.yaml")));
        await kube.ApiextensionsV1.CreateCustomResourceDefinitionAsync(crd, cancellationToken: ct);
        await EventuallyAsync(() => kube.ApiextensionsV1.ReadCustomResourceDefinitionAsync(crd.Metadata.Name, cancellationToken: ct),
            d => d.Status?.Conditions?.Any(x => x.Type == "Established" && x.Status == "True") == true, "the IPPool CRD to be Established", 30);
        await kube.CoreV1.CreateNamespaceAsync(new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "merlin-system" } }, cancellationToken: ct);

        // A Node as a kubelet would register it: created bare, its addresses and Ready condition written to status.
        await kube.CoreV1.CreateNodeAsync(new V1Node { ApiVersion = "v1", Kind = "Node", Metadata = new V1ObjectMeta { Name = "n1" } }, cancellationToken: ct);
        var now = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ");
        var nodeStatus = JsonSerializer.Serialize(new
        {
            status = new
            {
                addresses = new[] { new { type = "InternalIP", address = "127.0.0.11" } },
                conditions = new[] { new { type = "Ready", status = "True", reason = "KubeletReady", message = "set by the test", lastHeartbeatTime = now, lastTransitionTime = now } },
            },
        });
        await kube.CoreV1.PatchNodeStatusAsync(new V1Patch(nodeStatus, V1Patch.PatchType.MergePatch), "n1", cancellationToken: ct);

        // The pool, through the CRD's own endpoint (retried briefly: it may answer 404 for a moment after Established).
        var pool = new V1IPPool { Metadata = new V1ObjectMeta { Name = "default" }, Spec = new V1IPPoolSpec { Addresses = ["198.18.100.10-198.18.100.20"] } };
        await RetryAsync(() => kube.CustomObjects.CreateClusterCustomObjectAsync(pool, V1IPPool.Group, V1IPPool.Version, V1IPPool.Plural, cancellationToken: ct), "create the IPPool");

        await using var cluster = await ControllerCluster.StartAsync(config);
        cluster.StartReplica("a");
        var service = new V1Service
        {
            ApiVersion = "v1",
            Kind = "Service",
            Metadata = new V1ObjectMeta { Name = "web", NamespaceProperty = "default" },
            Spec = new V1ServiceSpec
            {
                Type = "LoadBalancer",
                LoadBalancerClass = Annotations.LoadBalancerClass,
                Ports = [new V1ServicePort { Name = "http", Port = 80, Protocol = "TCP", TargetPort = 8080 }],
            },
        };
        // Retried briefly: the API server allocates the ClusterIP and NodePort, which can lag its readiness by a moment.
        await RetryAsync(() => kube.CoreV1.CreateNamespacedServiceAsync(service, "default", cancellationToken: ct), "create the Service");

        var svc = await EventuallyAsync(() => ReadOrNullAsync(() => kube.CoreV1.ReadNamespacedServiceStatusAsync("web", "default", cancellationToken: ct)),
            s => Ingress(s) is not null && s.Status.Conditions?.Any(x => x.Type == Annotations.ConditionType && x.Status == "True") == true,
            "an address and a ready condition in the Service's status", 30);
        Assert.Equal("198.18.100.10", Ingress(svc));
        // ipMode is kept by kube-apiserver 1.30+ (LoadBalancerIPMode beta, on by default; GA in 1.32); older ones drop it.
        Assert.True(svc.Status.LoadBalancer.Ingress[0].IpMode == "VIP",
            $"status.loadBalancer.ingress[0].ipMode is {svc.Status.LoadBalancer.Ingress[0].IpMode ?? "absent"}, not VIP (an API server older than 1.30 drops the field)");
        Assert.Contains(Annotations.Finalizer, svc.Metadata.Finalizers);
        var condition = svc.Status.Conditions!.Single(x => x.Type == Annotations.ConditionType);
        Assert.Equal("True", condition.Status);

        var item = await EventuallyAsync(() => cluster.MerlinServiceAsync(WebId), i => i.Servers.Count == 1, "the Service in Merlin with one real server", 30);
        Assert.Equal(("198.18.100.10", 80u, Protocol.Tcp), (item.Service.Key.Ip, item.Service.Key.Port, item.Service.Key.Protocol));
        Assert.Equal(("127.0.0.11", 80u), (item.Servers[0].Key.Ip, item.Servers[0].Key.Port));

        // Delete: the finalizer holds the object until the controller has removed the Merlin service, then it is gone.
        await kube.CoreV1.DeleteNamespacedServiceAsync("web", "default", cancellationToken: ct);
        await EventuallyAsync(async () => (object?)(await ReadOrNullAsync(() => kube.CoreV1.ReadNamespacedServiceAsync("web", "default", cancellationToken: ct)) is null
            && await cluster.MerlinServiceAsync(WebId) is null ? "gone" : null), _ => true, "the Service and its Merlin service to be gone", 30);
        await EventuallyAsync(async () => (V1IPPool?)await kube.CustomObjects.GetClusterCustomObjectAsync<V1IPPool>(V1IPPool.Group, V1IPPool.Version, V1IPPool.Plural, "default", ct),
            p => p.Status is { Used: 0, Total: 11 }, "the pool's status to show every address free", 30);
    }

    /// <summary>The envtest directory, or a skip that says what is missing and how to provide it. Deliberately not
    /// Merlin.Testing's Requires.*, which fails with CI=true: the CI host cannot have these binaries, so this suite skips
    /// there too. A KUBEBUILDER_ASSETS that is set but lacks a binary fails instead: someone asked for the suite.</summary>
    private static string AssetsOrSkip()
    {
        var assets = Environment.GetEnvironmentVariable(KubeApiServerProcess.AssetsVariable);
        if (string.IsNullOrWhiteSpace(assets))
            Assert.Skip($"{KubeApiServerProcess.AssetsVariable} is not set, so there is no real kube-apiserver to test against (this optional suite skips, also with CI=true). " +
                "To run it, point KUBEBUILDER_ASSETS at a directory holding envtest's kube-apiserver and etcd (version 1.30 or later), e.g. " +
                "KUBEBUILDER_ASSETS=$(setup-envtest use -p path 1.32.x) with setup-envtest from sigs.k8s.io/controller-runtime/tools/setup-envtest.");
        var missing = new[] { "etcd", "kube-apiserver" }.Where(b => !File.Exists(Path.Combine(assets, b))).ToList();
        Assert.True(missing.Count == 0,
            $"{KubeApiServerProcess.AssetsVariable}={assets} has no {string.Join(" and no ", missing)}; it must name the directory holding envtest's binaries (unset it to skip this suite).");
        return assets;
    }

    private static async Task<T?> ReadOrNullAsync<T>(Func<Task<T>> read) where T : class
    {
        try
        {
            return await read();
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private static async Task RetryAsync<T>(Func<Task<T>> call, string what, int seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            try
            {
                await call();
                return;
            }
            catch (HttpOperationException e) when (DateTime.UtcNow < deadline && e.Response.StatusCode is HttpStatusCode.NotFound or >= HttpStatusCode.InternalServerError)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
            catch (HttpOperationException e)
            {
                throw new Xunit.Sdk.XunitException($"Could not {what}: {(int)e.Response.StatusCode} {e.Response.Content}");
            }
        }
    }
}
