using Grpc.Core;
using k8s;
using k8s.LeaderElection;
using k8s.LeaderElection.ResourceLock;
using k8s.Models;
using Merlin.Kubernetes.Kube;
using Microsoft.Extensions.Logging;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Kubernetes.Controller;

/// <summary>The leader lease (<c>coordination.k8s.io/v1</c>): which replica writes. A crashed leader's lease runs
/// out after <see cref="Duration"/> and a standby takes it at its next try (every <see cref="RetryPeriod"/>), so a crash
/// costs at most 14 s; a leader that is stopped gives the lease up and a standby takes over within seconds.</summary>
public sealed record LeaseOptions(string Namespace, string Name, string Identity)
{
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(12);
    public TimeSpan RenewDeadline { get; init; } = TimeSpan.FromSeconds(8);
    public TimeSpan RetryPeriod { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Hand the lease back when stopped while leading (off only to measure what a crash costs).</summary>
    public bool HandBackOnStop { get; init; } = true;
}

/// <summary>One replica of merlin-k8s: its caches run on every replica (a standby is warm), the controller only while
/// this replica holds the lease. <see cref="RunAsync"/> returns when the lease is lost (the process then exits and is
/// restarted clean, as Kubernetes controllers do) or when cancelled. Dispose it once stopped: that ends its Meter.</summary>
public sealed class ControllerHost : IDisposable
{
    private readonly LeaseOptions _lease;
    private readonly IKubernetes _k;
    private readonly ILogger _log;

    public ResourceCache<V1Service> Services { get; }
    public ResourceCache<V1Node> Nodes { get; }
    public ResourceCache<V1EndpointSlice> Slices { get; }
    public ResourceCache<V1IPPool> Pools { get; }
    public MerlinWriter Merlin { get; }
    public ServiceController Controller { get; }
    public ControllerMetrics Metrics { get; } = new();
    public bool Leading { get; private set; }
    public bool Synced => Services.Synced && Nodes.Synced && Slices.Synced && Pools.Synced;

    public ControllerHost(IKubernetes k, MerlinClient merlin, Func<CallOptions> callOptions, ControllerOptions options, LeaseOptions lease, ILoggerFactory logs, TimeProvider? time = null)
    {
        time ??= TimeProvider.System;
        (_k, _lease, _log) = (k, lease, logs.CreateLogger("Merlin.Kubernetes"));
        Services = new(Sources.Services(k), time, _log);
        Nodes = new(Sources.Nodes(k), time, _log);
        Slices = new(Sources.EndpointSlices(k), time, _log);
        Pools = new(Sources.IpPools(k), time, _log);
        Merlin = new MerlinWriter(merlin, callOptions, logs.CreateLogger<MerlinWriter>());
        var events = new EventRecorder(k, options.Component, lease.Identity, _log);
        Controller = new ServiceController(k, Services, Nodes, Slices, Pools, Merlin, options, events, Metrics, time, logs.CreateLogger<ServiceController>());
        Metrics.ObserveQueueDepth(() => Controller.Queue.Depth);
    }

    public async Task RunAsync(CancellationToken ct)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var caches = Task.WhenAll(Services.RunAsync(stop.Token), Nodes.RunAsync(stop.Token), Slices.RunAsync(stop.Token), Pools.RunAsync(stop.Token));
        var leaseLock = new LeaseLock(_k, _lease.Namespace, _lease.Name, _lease.Identity);
        var config = new LeaderElectionConfig(leaseLock)
        {
            LeaseDuration = _lease.Duration,
            RenewDeadline = _lease.RenewDeadline,
            RetryPeriod = _lease.RetryPeriod,
        };
        using var elector = new LeaderElector(config);
        using var leading = CancellationTokenSource.CreateLinkedTokenSource(stop.Token);
        Task controller = Task.CompletedTask;
        elector.OnStartedLeading += () =>
        {
            Leading = true;
            Metrics.Leader.Record(1);
            _log.LogInformation("{Identity} leads (lease {Namespace}/{Name})", _lease.Identity, _lease.Namespace, _lease.Name);
            controller = Task.Run(() => Controller.RunAsync(leading.Token), leading.Token);
        };
        elector.OnNewLeader += leader => _log.LogInformation("Leader is {Leader}", leader);
        elector.OnError += e => _log.LogWarning("Leader election: {Error}", e.Message);
        try
        {
            await elector.RunUntilLeadershipLostAsync(stop.Token);
            if (!stop.IsCancellationRequested) _log.LogWarning("{Identity} lost the lease; stopping", _lease.Identity);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        finally
        {
            var wasLeading = Leading;
            Leading = false;
            Metrics.Leader.Record(0);
            leading.Cancel();
            stop.Cancel();
            try { await controller; } catch (OperationCanceledException) { }
            try { await caches; } catch (OperationCanceledException) { }
            if (wasLeading && ct.IsCancellationRequested && _lease.HandBackOnStop) await ReleaseAsync(leaseLock);
        }
    }

    public void Dispose() => Metrics.Dispose();

    // Stopped while leading (SIGTERM, a rolling update): the lease is handed back — it runs out in a second instead of
    // its full duration — so a standby takes over at its next try. Only after the controller has stopped writing.
    private async Task ReleaseAsync(LeaseLock leaseLock)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(3));
            var record = await leaseLock.GetAsync(timeout.Token);
            if (record.HolderIdentity != _lease.Identity) return;
            var now = DateTime.UtcNow;
            await leaseLock.UpdateAsync(new LeaderElectionRecord
            {
                HolderIdentity = "",
                LeaseDurationSeconds = 1,
                AcquireTime = now,
                RenewTime = now,
                LeaderTransitions = record.LeaderTransitions,
            }, timeout.Token);
            _log.LogInformation("{Identity} handed the lease back", _lease.Identity);
        }
        catch (Exception e)
        {
            _log.LogWarning("The lease was not handed back ({Error}); a standby takes over when it runs out", e.Message);
        }
    }
}
