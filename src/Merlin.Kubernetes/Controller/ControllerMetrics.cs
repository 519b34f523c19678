using System.Diagnostics.Metrics;

namespace Merlin.Kubernetes.Controller;

/// <summary>
/// The controller's instruments, on a Meter of its own (so two controllers in one test process do not share them);
/// merlin-k8s exports it on /metrics as the merlin_k8s_* families. A new metric is an instrument here plus its label
/// names in <see cref="InstrumentLabels"/>. Disposing it ends the Meter: a Meter stays listed process-wide until
/// then, and with it the queue-depth callback and the host that callback reads.
/// </summary>
public sealed class ControllerMetrics : IDisposable
{
    public const string MeterName = "merlin.k8s";

    /// <summary>The label names each instrument's measurements carry, so an exporter declares every family from the start.</summary>
    public static IReadOnlyDictionary<string, string[]> InstrumentLabels { get; } = new Dictionary<string, string[]>
    {
        ["k8s_leader"] = [],
        ["k8s_pool_addresses"] = ["pool", "state"],
        ["k8s_reconcile_duration_seconds"] = [],
        ["k8s_reconcile_errors"] = ["reason"],
        ["k8s_merlin_writes"] = [],
        ["k8s_queue_depth"] = [],
        ["k8s_first_sync_seconds"] = [],
    };

    public Meter Meter { get; } = new(MeterName);
    public Gauge<int> Leader { get; }
    public Gauge<long> PoolAddresses { get; }
    public Histogram<double> ReconcileSeconds { get; }
    public Counter<long> ReconcileErrors { get; }
    public Counter<long> MerlinWrites { get; }
    public Gauge<double> FirstSyncSeconds { get; }

    public ControllerMetrics()
    {
        Leader = Meter.CreateGauge<int>("k8s_leader", description: "1 while this replica holds the leader lease");
        PoolAddresses = Meter.CreateGauge<long>("k8s_pool_addresses", description: "Addresses of each IPPool, by state (total, used)");
        ReconcileSeconds = Meter.CreateHistogram("k8s_reconcile_duration_seconds", null, "Time to reconcile one Service", tags: null,
            new InstrumentAdvice<double> { HistogramBucketBoundaries = [.. Enumerable.Range(0, 14).Select(i => 0.001 * Math.Pow(2, i))] }); // 1 ms … 8 s
        ReconcileErrors = Meter.CreateCounter<long>("k8s_reconcile_errors", description: "Reconciles that failed, by reason");
        MerlinWrites = Meter.CreateCounter<long>("k8s_merlin_writes", description: "Calls that changed Merlin (create, update, drain, delete)");
        FirstSyncSeconds = Meter.CreateGauge<double>("k8s_first_sync_seconds", description: "Time from leadership to every Service reconciled once");
    }

    /// <summary>The work queue's depth, read when /metrics is scraped.</summary>
    public void ObserveQueueDepth(Func<int> depth) =>
        Meter.CreateObservableGauge("k8s_queue_depth", depth, description: "Services waiting to be reconciled or being reconciled");

    public void Dispose() => Meter.Dispose();
}
