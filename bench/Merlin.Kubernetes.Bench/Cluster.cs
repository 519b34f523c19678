using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Merlin.Client;
using Merlin.Daemon;
using Merlin.Kubernetes.ApiServer;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.PrometheusExport;
using Merlin.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using k8s;
using k8s.Models;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;
using Wire = Merlin.Contracts;

namespace Merlin.Kubernetes.Bench;

/// <summary>One cluster for one scenario: the Kubernetes API test server in this process, the real merlin daemon
/// (its own process by default, or in this one), and controller replicas in this process. Everything listens on
/// 127.0.0.1; nodes have 127.0.x.y addresses, so the daemon's health checks never leave the machine. Disposing stops
/// the replicas, the daemon (by its PID) and the API server, and deletes the temp directory.</summary>
public sealed class Cluster : IAsyncDisposable
{
    private readonly string _dir;
    private readonly List<Replica> _replicas = [];
    private readonly List<Process> _children = [];
    private Process? _daemonProcess;
    private WebApplication? _daemonApp;
    private GrpcChannel? _channel;

    public TestApiServer Api { get; private set; } = null!;
    public k8s.Kubernetes Kube { get; private set; } = null!;
    public MerlinClient Merlin { get; private set; } = null!;
    public int MerlinPort { get; private set; }
    public int? DaemonPid => _daemonProcess?.Id;
    public string Dir => _dir;
    public ILoggerFactory Logs { get; }

    private Cluster(ILoggerFactory logs)
    {
        _dir = Path.Combine(Path.GetTempPath(), $"merlin-k8s-bench-{Environment.ProcessId}-{Guid.NewGuid():N}"[..48]);
        Directory.CreateDirectory(_dir);
        Logs = logs;
    }

    public static async Task<Cluster> StartAsync(bool daemonProcess, ILoggerFactory logs, CancellationToken ct)
    {
        var c = new Cluster(logs);
        try
        {
            c.Api = await TestApiServer.StartAsync(ct);
            c.Kube = new k8s.Kubernetes(c.Api.ClientConfiguration());
            c.Api.Put(new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "default" } });
            c.Api.Put(new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "merlin-system" } });
            c.Api.Put(KubernetesYaml.Deserialize<V1CustomResourceDefinition>(File.ReadAllText(Path.Combine(Repository.Root, "deploy", "kubernetes", "crd-ippool.yaml"))));
            // 198.18.0.0/20: 4,096 addresses, enough for every scenario's Services.
            c.Api.Put(new V1IPPool { Metadata = new V1ObjectMeta { Name = "bench" }, Spec = new V1IPPoolSpec { Addresses = ["198.18.0.0/20"] } });
            await c.StartDaemonAsync(daemonProcess, ct);
            return c;
        }
        catch
        {
            await c.DisposeAsync();
            throw;
        }
    }

    private async Task StartDaemonAsync(bool asProcess, CancellationToken ct)
    {
        for (var attempt = 1; ; attempt++)
        {
            MerlinPort = LocalPorts.Free();
            var health = LocalPorts.Free();
            var store = Path.Combine(_dir, $"merlin-{attempt}.db");
            var state = Path.Combine(_dir, "state");
            Directory.CreateDirectory(state);
            if (asProcess)
            {
                var dll = Path.Combine(AppContext.BaseDirectory, "merlin.dll");
                var start = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (var a in new[] { dll, "--listen-address", "127.0.0.1", "--port", I(MerlinPort), "--health-listen-address", "127.0.0.1", "--health-port", I(health),
                             "--store-backend", "sqlite", "--store-path", store, "--state-dir", state, "--dataplane", "none", "--log-level", "error" })
                    start.ArgumentList.Add(a);
                _daemonProcess = Process.Start(start)!;
                _daemonProcess.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.Error.WriteLine($"  daemon: {l}"); };
                _daemonProcess.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.Error.WriteLine($"  daemon: {l}"); };
                _daemonProcess.BeginOutputReadLine();
                _daemonProcess.BeginErrorReadLine();
            }
            else
            {
                _daemonApp = DaemonHost.Build(new DaemonOptions
                {
                    Port = MerlinPort, HealthPort = health, StorePath = store, StateDir = state, DataplaneKind = "none", LogLevel = "warning",
                });
                try { await _daemonApp.StartAsync(ct); }
                catch (IOException) when (attempt < 5) { await _daemonApp.DisposeAsync(); _daemonApp = null; continue; }
            }
            // The production channel (512 MiB messages: a List of 100,000 servers is past gRPC's 4 MiB default).
            _channel?.Dispose();
            _channel = GrpcConnection.CreateChannel(new ConnectionOptions("127.0.0.1", (ushort)MerlinPort, TimeSpan.FromSeconds(10)));
            Merlin = new MerlinClient(_channel);
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromSeconds(60))
            {
                if (_daemonProcess is { HasExited: true }) break;
                try
                {
                    await Merlin.ListAsync(new Google.Protobuf.WellKnownTypes.Empty(), deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: ct);
                    return;
                }
                catch (RpcException)
                {
                    await Task.Delay(100, ct);
                }
            }
            if (_daemonProcess is { HasExited: true } && attempt < 5)
            {
                _daemonProcess.Dispose();
                _daemonProcess = null;
                continue; // most likely a port taken between FreePort and the daemon's bind
            }
            throw new InvalidOperationException("the merlin daemon did not answer within 60 s");
        }
    }

    public static string NodeIp(int i) => $"127.0.{1 + i / 250}.{1 + i % 250}";

    public void Nodes(int count)
    {
        for (var i = 0; i < count; i++)
            Api.Put(new V1Node
            {
                ApiVersion = "v1",
                Kind = "Node",
                Metadata = new V1ObjectMeta { Name = $"n{i}" },
                Status = new V1NodeStatus
                {
                    Addresses = [new V1NodeAddress { Type = "InternalIP", Address = NodeIp(i) }],
                    Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
                },
            });
    }

    public static V1Service ServiceObject(string name, bool local = false) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" },
        Spec = new V1ServiceSpec
        {
            Type = "LoadBalancer",
            LoadBalancerClass = Annotations.LoadBalancerClass,
            ExternalTrafficPolicy = local ? "Local" : "Cluster",
            Ports = [new V1ServicePort { Name = "http", Port = 80, Protocol = "TCP", TargetPort = 8080 }],
        },
    };

    /// <summary>Creates Services through the official client, a few at once.</summary>
    public async Task CreateServicesAsync(IEnumerable<string> names, bool local, CancellationToken ct) =>
        await Parallel.ForEachAsync(names, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = ct },
            async (n, c) => await Kube.CoreV1.CreateNamespacedServiceAsync(ServiceObject(n, local), "default", cancellationToken: c));

    public static ControllerOptions Options(int workers) => new()
    {
        DrainPeriod = TimeSpan.FromSeconds(60),
        Health = HealthOptions.Default with { ClusterCheck = null },
        Resync = TimeSpan.FromMinutes(5),
        RetryAllocation = TimeSpan.FromSeconds(1),
        Workers = workers,
    };

    /// <summary>Starts a replica in this process; it campaigns for the lease at once.</summary>
    public Replica StartReplica(string identity, int workers, LeaseOptions? lease = null)
    {
        lease ??= new LeaseOptions("merlin-system", "merlin-k8s", identity); // the defaults: 12 s, renew 8 s, retry 2 s
        var kube = new k8s.Kubernetes(Api.ClientConfiguration());
        var host = new ControllerHost(kube, Merlin, () => new CallOptions(deadline: DateTime.UtcNow.AddSeconds(10)),
            Options(workers) with { Identity = identity }, lease, Logs);
        // Exported as merlin-k8s exports it, from the start (measurements before an exporter listens are not kept).
        var metrics = MeterExporter.Of(host.Metrics.Meter, ControllerMetrics.InstrumentLabels);
        var stop = new CancellationTokenSource();
        var started = Stopwatch.GetTimestamp();
        var replica = new Replica(identity, host, metrics, kube, stop, Task.Run(() => host.RunAsync(stop.Token)), started);
        _replicas.Add(replica);
        return replica;
    }

    /// <summary>Starts merlin-k8s itself as a child process against this cluster (for its memory as a process of its own).</summary>
    public (Process Process, int MetricsPort) StartControllerProcess(string identity, string leaseName, int workers, IReadOnlyDictionary<string, string>? env = null)
    {
        // The test server's own kubeconfig names a user with no credentials, which the C# client refuses; the server
        // checks none, so any token does.
        var kubeconfig = Path.Combine(_dir, "kubeconfig");
        File.WriteAllText(kubeconfig, $$"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: bench
              cluster:
                server: {{Api.Url.ToString().TrimEnd('/')}}
            contexts:
            - name: bench
              context:
                cluster: bench
                user: bench
            current-context: bench
            users:
            - name: bench
              user:
                token: bench

            """);
        var port = LocalPorts.Free();
        var start = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "merlin-k8s.dll"), "--kubeconfig", kubeconfig, "--merlin-api", $"127.0.0.1:{MerlinPort}",
                     "--node-health-check", "", "--drain-period", "60s", "--workers", I(workers), "--lease-namespace", "merlin-system", "--lease-name", leaseName,
                     "--identity", identity, "--listen", $"127.0.0.1:{port}" })
            start.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) start.Environment[k] = v;
        var p = Process.Start(start)!;
        _children.Add(p);
        p.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l && !l.Contains(" info: ", StringComparison.Ordinal)) Console.Error.WriteLine($"  merlin-k8s: {l}"); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.Error.WriteLine($"  merlin-k8s: {l}"); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return (p, port);
    }

    /// <summary>Stops a replica as a crash would: it keeps the lease until the lease runs out.</summary>
    public async Task StopReplicaAsync(Replica r)
    {
        await r.Stop.CancelAsync();
        try { await r.Run.WaitAsync(TimeSpan.FromSeconds(30)); } catch (OperationCanceledException) { } catch (TimeoutException) { }
    }

    /// <summary>Kills a child process this cluster started (by its handle, i.e. its PID).</summary>
    public void StopChild(Process p)
    {
        if (_children.Remove(p)) Kill(p);
    }

    /// <summary>Stops a replica and drops every reference this cluster holds to it (so its memory can be collected).</summary>
    public async Task ForgetReplicaAsync(Replica r)
    {
        await StopReplicaAsync(r);
        _replicas.Remove(r);
        r.Metrics.Dispose();
        r.Host.Dispose();
        r.Kube.Dispose();
        r.Stop.Dispose();
    }

    public async Task<Wire.ListResponse> ListMerlinAsync(CancellationToken ct) =>
        await Merlin.ListAsync(new Google.Protobuf.WellKnownTypes.Empty(), deadline: DateTime.UtcNow.AddSeconds(60), cancellationToken: ct);

    public async ValueTask DisposeAsync()
    {
        foreach (var r in _replicas)
        {
            r.Stop.Cancel();
            try { await r.Run.WaitAsync(TimeSpan.FromSeconds(30)); } catch { /* stopping: its failure is not this run's result */ }
            r.Metrics.Dispose();
            r.Host.Dispose();
            r.Kube.Dispose();
        }
        foreach (var p in _children) Kill(p);
        _channel?.Dispose();
        if (_daemonProcess is not null) Kill(_daemonProcess);
        if (_daemonApp is not null)
        {
            try { await _daemonApp.StopAsync(CancellationToken.None); } catch { /* stopping */ }
            await _daemonApp.DisposeAsync();
        }
        Kube?.Dispose();
        if (Api is not null) await Api.DisposeAsync();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    // Only processes this run started, by their handle (their PID).
    private static void Kill(Process p)
    {
        try
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException) { }
        p.Dispose();
    }

    private static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
}

public sealed record Replica(string Identity, ControllerHost Host, MeterExporter Metrics, k8s.Kubernetes Kube, CancellationTokenSource Stop, Task Run, long Started)
{
    /// <summary>The replica's /metrics page, as merlin-k8s would serve it.</summary>
    public async Task<string> ScrapeAsync(CancellationToken ct)
    {
        using var page = new MemoryStream();
        await Metrics.Registry.CollectAndExportAsTextAsync(page, ct);
        return System.Text.Encoding.UTF8.GetString(page.ToArray());
    }
}
