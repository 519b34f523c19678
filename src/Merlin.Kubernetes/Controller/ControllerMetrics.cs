using Prometheus;

namespace Merlin.Kubernetes.Controller;

/// <summary>The controller's Prometheus metrics, in a registry of its own (so two controllers in one test process do not share them).</summary>
public sealed class ControllerMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    public Gauge Leader { get; }
    public Gauge PoolAddresses { get; }
    public Histogram ReconcileSeconds { get; }
    public Counter ReconcileErrors { get; }
    public Counter MerlinWrites { get; }
    public Gauge QueueDepth { get; }
    public Gauge FirstSyncSeconds { get; }

    public ControllerMetrics()
    {
        var f = Metrics.WithCustomRegistry(Registry);
        Leader = f.CreateGauge("merlin_k8s_leader", "1 while this replica holds the leader lease");
        PoolAddresses = f.CreateGauge("merlin_k8s_pool_addresses", "Addresses of each IPPool, by state (total, used)", "pool", "state");
        ReconcileSeconds = f.CreateHistogram("merlin_k8s_reconcile_duration_seconds", "Time to reconcile one Service",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.001, 2, 14) });
        ReconcileErrors = f.CreateCounter("merlin_k8s_reconcile_errors_total", "Reconciles that failed, by reason", "reason");
        MerlinWrites = f.CreateCounter("merlin_k8s_merlin_writes_total", "Calls that changed Merlin (create, update, drain, delete)");
        QueueDepth = f.CreateGauge("merlin_k8s_queue_depth", "Services waiting to be reconciled or being reconciled");
        FirstSyncSeconds = f.CreateGauge("merlin_k8s_first_sync_seconds", "Time from leadership to every Service reconciled once");
    }
}
