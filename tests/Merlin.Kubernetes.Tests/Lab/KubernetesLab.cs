using Grpc.Core;
using Merlin.Client;
using Merlin.Kubernetes.ApiServer;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Mapping;
using Merlin.Lab;
using Merlin.Testing;
using k8s;
using k8s.Models;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Kubernetes.Tests.Lab;

/// <summary>
/// The Kubernetes lab: two real merlin daemons (nftables DSR, one etcd) in lab load balancers with the VIPs routed to
/// lb1, four lab hosts as the cluster's nodes (the VIPs on their lo, as kube-proxy accepts a load-balancer IP), the
/// Kubernetes API test server with the CRD, a pool of the lab's two VIPs and the four nodes (Ready, InternalIP), and
/// controller replicas in this process talking to Merlin over lb1's Unix socket (no test address is touched from the
/// root namespace). Disposing it stops everything it started.
/// </summary>
internal sealed class KubernetesLab : IAsyncDisposable
{
    private readonly List<IAsyncDisposable> _owned = [];
    private Grpc.Net.Client.GrpcChannel? _channel;

    public Merlin.Lab.Lab Lab { get; private init; } = null!;
    public LabMerlin Lb1 { get; private set; } = null!;
    public LabMerlin Lb2 { get; private set; } = null!;
    public TestApiServer Api { get; private set; } = null!;
    public Kubectl Kubectl { get; private set; } = null!;
    public k8s.Kubernetes Kube { get; private set; } = null!;
    public MerlinClient MerlinApi { get; private set; } = null!;
    public ListLoggerFactory Logs { get; } = new();

    /// <summary>Nodes are checked on the lab servers' /healthz (kube-proxy's :10256 stand-in), every 500 ms.</summary>
    public ControllerOptions Options { get; } = new()
    {
        DrainPeriod = TimeSpan.FromSeconds(60),
        Health = HealthOptions.Default with { ClusterCheck = new Uri($"http://check.invalid:{Merlin.Lab.Lab.HttpPort}/healthz"), Period = TimeSpan.FromMilliseconds(500), Timeout = TimeSpan.FromMilliseconds(400), Up = 1, Down = 1 },
    };

    public static void Require()
    {
        Merlin.Lab.Lab.Require();
        Requires.Etcd();
        Kubectl.Require();
    }

    public static async Task<KubernetesLab> StartAsync(CancellationToken ct)
    {
        var lab = await Merlin.Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 4, ExtraHosts = ["etcd"], IPv6 = false, VipCount = 2 }, ct);
        var k = new KubernetesLab { Lab = lab };
        try
        {
            await lab.StartServersAsync(ct: ct);
            var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], ct);
            var socket = Path.Combine(lab.TempPath, "merlin-lb1.sock");
            k._owned.Add(k.Lb1 = await LabMerlin.StartAsync(lab["lb1"], new LabMerlinOptions { EtcdEndpoint = etcd, ExtraArgs = ["--unix-socket", socket] }, ct));
            k._owned.Add(k.Lb2 = await LabMerlin.StartAsync(lab["lb2"], new LabMerlinOptions { EtcdEndpoint = etcd }, ct));
            await lab.AssignVipAsync(lab["lb1"], ct);

            k._owned.Add(k.Api = await TestApiServer.StartAsync(ct));
            k.Api.BookmarkInterval = TimeSpan.FromMilliseconds(300);
            k.Kubectl = new Kubectl(k.Api);
            var deploy = Path.Combine(Repository.Root, "deploy", "kubernetes");
            await k.Kubectl.OkAsync("apply", "-f", Path.Combine(deploy, "namespace.yaml"));
            await k.Kubectl.OkAsync("apply", "-f", Path.Combine(deploy, "crd-ippool.yaml"));
            await k.Kubectl.OkAsync("apply", "-f", k.Kubectl.File("pool.yaml", $$"""
                apiVersion: merlin.io/v1
                kind: IPPool
                metadata: {name: lab}
                spec: {addresses: ["{{lab.VipsV4[0]}}-{{lab.VipsV4[1]}}"]}
                """));
            var nodes = lab.RealServers.Select((rs, i) => (Name: $"node{i + 1}", Host: rs)).ToList();
            foreach (var (name, _) in nodes)
                await k.Kubectl.OkAsync("apply", "-f", k.Kubectl.File($"{name}.yaml", $$"""
                    apiVersion: v1
                    kind: Node
                    metadata: {name: {{name}}}
                    """));
            k.Kube = new k8s.Kubernetes(k.Api.ClientConfiguration());
            foreach (var (name, host) in nodes) // the kubelet writes a node's status, not kubectl apply
                await k.Kube.CoreV1.PatchNodeStatusAsync(new V1Patch($$$"""{"status":{"addresses":[{"type":"InternalIP","address":"{{{host.Address}}}"}],"conditions":[{"type":"Ready","status":"True"}]}}""", V1Patch.PatchType.MergePatch), name, cancellationToken: ct);

            k._channel = GrpcConnection.CreateChannel(new ConnectionOptions("localhost", 0, TimeSpan.FromSeconds(10)) { UnixSocket = socket });
            k.MerlinApi = new MerlinClient(k._channel);
            return k;
        }
        catch
        {
            await k.DisposeAsync();
            throw;
        }
    }

    /// <summary>A controller replica with a short lease (3 s), so a takeover fits in a test.</summary>
    public ControllerHost Replica(string id) => new(new k8s.Kubernetes(Api.ClientConfiguration()), MerlinApi, () => new CallOptions(deadline: DateTime.UtcNow.AddSeconds(10)),
        Options with { Identity = id }, new LeaseOptions("merlin-system", "merlin-k8s", id) { Duration = TimeSpan.FromSeconds(3), RenewDeadline = TimeSpan.FromSeconds(2), RetryPeriod = TimeSpan.FromMilliseconds(300) }, Logs);

    public async ValueTask DisposeAsync()
    {
        _channel?.Dispose();
        Kube?.Dispose();
        Kubectl?.Dispose();
        for (var i = _owned.Count - 1; i >= 0; i--) await _owned[i].DisposeAsync();
        await Lab.DisposeAsync();
    }
}
