using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Kubernetes.ApiServer;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.Testing;
using Microsoft.AspNetCore.Builder;
using k8s;
using k8s.Models;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;
using Wire = Merlin.Contracts;

namespace Merlin.Kubernetes.Tests.Controller;

/// <summary>A cluster for the controller: the Kubernetes API test server, the real merlin daemon (SQLite store, no
/// dataplane) on loopback, and controller replicas run in this process. Nodes have loopback addresses, so the health
/// checks the daemon runs against them never leave the machine.</summary>
public sealed class ControllerCluster : IAsyncDisposable
{
    private readonly TempDir _dir = new("merlin-k8s");
    private readonly List<(CancellationTokenSource Stop, Task Run, ControllerHost Host)> _replicas = [];
    private WebApplication? _daemon;
    private GrpcChannel? _channel;
    private Func<KubernetesClientConfiguration> _config = null!;

    public TestApiServer Api { get; private set; } = null!;
    public k8s.Kubernetes Kube { get; private set; } = null!;
    public MerlinClient Merlin { get; private set; } = null!;
    public ListLoggerFactory Logs { get; } = new();
    public int MerlinPort { get; private set; }

    public static async Task<ControllerCluster> StartAsync()
    {
        var c = new ControllerCluster();
        c.Api = await TestApiServer.StartAsync(TestContext.Current.CancellationToken);
        c.Api.BookmarkInterval = TimeSpan.FromMilliseconds(300);
        c._config = c.Api.ClientConfiguration;
        c.Kube = new k8s.Kubernetes(c._config());
        c.Api.Put(new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "default" } });
        c.Api.Put(new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "merlin-system" } });
        // The CRD as shipped in deploy/kubernetes, so the pools the tests make are the ones a cluster would take.
        c.Api.Put(KubernetesYaml.Deserialize<V1CustomResourceDefinition>(File.ReadAllText(Path.Combine(Repository.Root, "deploy", "kubernetes", "crd-ippool.yaml"))));
        await c.StartDaemonAsync();
        return c;
    }

    /// <summary>The daemon and replicas against an API server already running (a real kube-apiserver, see
    /// RealApiServer/KubeApiServerProcess.cs). There is no test server: <see cref="Api"/> is null, so the helpers that write
    /// through it (Node, Pool, GetService, ServiceStatusAsync) are not for this cluster; use <see cref="Kube"/>.</summary>
    public static async Task<ControllerCluster> StartAsync(KubernetesClientConfiguration config)
    {
        var c = new ControllerCluster { _config = () => config };
        c.Kube = new k8s.Kubernetes(config);
        await c.StartDaemonAsync();
        return c;
    }

    private async Task StartDaemonAsync()
    {
        for (var attempt = 1; ; attempt++)
        {
            MerlinPort = LocalPorts.Free();
            _daemon = DaemonHost.Build(new DaemonOptions
            {
                Port = MerlinPort, HealthPort = LocalPorts.Free(), StorePath = _dir.File("merlin.db"), StateDir = _dir.Path, DataplaneKind = "none",
                SyncPeriod = TimeSpan.FromSeconds(30),
            });
            try
            {
                await _daemon.StartAsync(TestContext.Current.CancellationToken);
                break;
            }
            catch (IOException) when (attempt < 5)
            {
                await _daemon.DisposeAsync();
            }
        }
        _channel = GrpcChannel.ForAddress($"http://127.0.0.1:{MerlinPort}");
        Merlin = new MerlinClient(_channel);
    }

    public static ControllerOptions Options => new()
    {
        DrainPeriod = TimeSpan.FromSeconds(60),
        Health = HealthOptions.Default with { ClusterCheck = null },
        Resync = TimeSpan.FromMinutes(5),
        RetryAllocation = TimeSpan.FromSeconds(1),
    };

    /// <summary>Starts a replica; it campaigns for the lease at once.</summary>
    public ControllerHost StartReplica(string identity, ControllerOptions? options = null)
    {
        var lease = new LeaseOptions("merlin-system", "merlin-k8s", identity)
        {
            Duration = TimeSpan.FromSeconds(3), RenewDeadline = TimeSpan.FromSeconds(2), RetryPeriod = TimeSpan.FromMilliseconds(300),
        };
        var host = new ControllerHost(new k8s.Kubernetes(_config()), Merlin, () => new CallOptions(deadline: DateTime.UtcNow.AddSeconds(10)),
            (options ?? Options) with { Identity = identity }, lease, Logs);
        var stop = new CancellationTokenSource();
        _replicas.Add((stop, Task.Run(() => host.RunAsync(stop.Token)), host));
        return host;
    }

    /// <summary>Stops a replica as SIGTERM does: the controller stops, then the lease is handed back.</summary>
    public async Task StopReplicaAsync(ControllerHost host)
    {
        var r = _replicas.Single(x => x.Host == host);
        r.Stop.Cancel();
        await r.Run;
    }

    public V1Node Node(string name, string ip, bool ready = true)
    {
        var node = new V1Node
        {
            ApiVersion = "v1",
            Kind = "Node",
            Metadata = new V1ObjectMeta { Name = name },
            Status = new V1NodeStatus
            {
                Addresses = [new V1NodeAddress { Type = "InternalIP", Address = ip }],
                Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False" }],
            },
        };
        return Api.Put(node);
    }

    public V1IPPool Pool(string name, params string[] addresses) =>
        Api.Put(new V1IPPool { Metadata = new V1ObjectMeta { Name = name }, Spec = new V1IPPoolSpec { Addresses = addresses } });

    public V1Service Service(string name, Action<V1Service>? edit = null)
    {
        var svc = new V1Service
        {
            Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" },
            Spec = new V1ServiceSpec
            {
                Type = "LoadBalancer",
                LoadBalancerClass = Annotations.LoadBalancerClass,
                Ports = [new V1ServicePort { Name = "http", Port = 80, Protocol = "TCP", TargetPort = 8080 }],
            },
        };
        edit?.Invoke(svc);
        return Kube.CoreV1.CreateNamespacedService(svc, "default");
    }

    public V1Service? GetService(string name) => Api.Get<V1Service>("v1", "Service", "default", name);

    public async Task<Wire.ListResponse> ListMerlinAsync() => await Merlin.ListAsync(new Google.Protobuf.WellKnownTypes.Empty());

    public async Task<Wire.ListResponse.Types.Item?> MerlinServiceAsync(string id) =>
        (await ListMerlinAsync()).Items.FirstOrDefault(i => i.Service.Id == id);

    public static async Task<T> EventuallyAsync<T>(Func<Task<T?>> probe, Func<T, bool> done, string what, int seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        T? last = default;
        while (DateTime.UtcNow < deadline)
        {
            last = await probe();
            if (last is not null && done(last)) return last;
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
        throw new Xunit.Sdk.XunitException($"Timed out after {seconds} s waiting for {what}; last seen: {last}");
    }

    public Task<V1Service> ServiceStatusAsync(string name, Func<V1Service, bool> done, string what) =>
        EventuallyAsync(() => Task.FromResult(GetService(name)), done, what);

    public static string? Ingress(V1Service svc) => svc.Status?.LoadBalancer?.Ingress?.FirstOrDefault()?.Ip;

    public async ValueTask DisposeAsync()
    {
        foreach (var r in _replicas)
        {
            r.Stop.Cancel();
            try { await r.Run; } catch (OperationCanceledException) { }
            r.Host.Dispose();
        }
        _channel?.Dispose();
        if (_daemon is not null)
        {
            await _daemon.StopAsync(CancellationToken.None);
            await _daemon.DisposeAsync();
        }
        Kube?.Dispose();
        if (Api is not null) await Api.DisposeAsync();
        _dir.Dispose();
    }

}
