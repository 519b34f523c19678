using System.Diagnostics;
using System.Diagnostics.Metrics;
using Merlin.Store;
using Microsoft.Extensions.Logging;

namespace Merlin.Reconciler;

public sealed record PassResult(bool StoreReachable, int Planned, int Applied, int Failed, IReadOnlyList<RejectedRecord> Rejected, TimeSpan Duration, long Revision)
{
    public bool Converged => StoreReachable && Failed == 0;
}

/// <summary>
/// Runs reconcile passes: read the store, read the dataplane, plan, apply (one at a time; it keeps what the
/// next pass needs: the store mirror, the watch events not yet applied, the last converged inputs). Store unreachable ⇒ the
/// dataplane is not touched. A failed operation is logged and counted and the pass goes on with
/// operations that do not depend on it; the loop retries the pass with backoff.
/// </summary>
public sealed partial class ReconcilePass(IStore store, IDataplane dataplane, ReconcilerStatus status, ILogger<ReconcilePass> logger, TimeProvider time, IServerHealth? health = null)
{
    /// <summary>The Meter of the passes' instruments (and of the daemon's): a host exports it on /metrics.</summary>
    public const string MeterName = "merlin";

    /// <summary>The label names each instrument's measurements carry, so an exporter declares the families before the first pass.</summary>
    public static IReadOnlyDictionary<string, string[]> InstrumentLabels { get; } = new Dictionary<string, string[]>
    {
        ["reconcile_passes"] = ["result"],
        ["dataplane_operations"] = ["kind", "result"],
        ["reconcile_duration_seconds"] = [],
    };

    private static readonly Meter Meter = new(MeterName);
    private static readonly Counter<long> Passes = Meter.CreateCounter<long>("reconcile_passes", description: "Reconcile passes by result");
    private static readonly Counter<long> Operations = Meter.CreateCounter<long>("dataplane_operations", description: "Dataplane operations by kind and result");
    private static readonly Histogram<double> PassSeconds = Meter.CreateHistogram("reconcile_duration_seconds", null, "Duration of a reconcile pass", tags: null,
        new InstrumentAdvice<double> { HistogramBucketBoundaries = [.. Enumerable.Range(0, 16).Select(i => 0.0005 * Math.Pow(2, i))] }); // 0.5 ms … 16 s

    private string _lastRejections = "";
    private StoreMirror? _mirror;
    private IReadOnlyList<HealthTarget>? _trackedChecks;
    private HashSet<(Model.ServiceKey, Model.RealServerKey)> _checkedServers = [];

    // Watch events not yet applied; the watch's task adds, a pass takes.
    private readonly Lock _observedLock = new();
    private List<StoreChange> _observed = [];
    private volatile bool _followingWatch;

    /// <summary>The health generation of the last pass that applied everything it planned; null after one that did not.</summary>
    private long? _inSync;

    /// <summary>The inputs of the last pass that converged, to recognise a pass with nothing to do.</summary>
    private (DataplaneState Desired, DataplaneState Actual, long Health)? _converged;
    /// <summary>The last pass's desired state with health applied (what the status shows as effective weights), if it applied everything.</summary>
    private DataplaneState? _effective;

    /// <summary>Passes that found the store unchanged and reused the desired state of the one before.</summary>
    public long StoreReadsSkipped { get; private set; }

    /// <summary>Passes whose inputs were those of the last converged pass, so planning was skipped.</summary>
    public long PlansSkipped { get; private set; }

    /// <summary>Passes that read and decoded the whole store (the first, a resync, a watch event without its record, no watch).</summary>
    public long StoreReads { get; private set; }

    /// <summary>Passes that planned only the services watch events touched.</summary>
    public long ScopedPlans { get; private set; }

    /// <summary>
    /// Set while a watch of the store feeds <see cref="Observe"/> (by <see cref="ReconcileLoop"/>): a pass then
    /// applies the events it was given instead of re-reading a store whose revision moved. Without a watch a pass
    /// re-reads whenever the revision moved.
    /// </summary>
    public bool FollowingWatch
    {
        get => _followingWatch;
        set => _followingWatch = value;
    }

    /// <summary>A change from the store's watch, applied by the next pass (any thread).</summary>
    public void Observe(StoreChange change)
    {
        lock (_observedLock) _observed.Add(change);
    }

    /// <summary>A pass that plans everything (start, the sync period, after a failure; what a direct caller gets).</summary>
    public Task<PassResult> RunPassAsync(CancellationToken ct) => RunPassAsync(fullPlan: true, ct);

    /// <summary>
    /// One pass. With <paramref name="fullPlan"/> false and a watch followed, it plans only the services the
    /// watch events since the last pass touched, when the last pass applied everything it planned and no health
    /// verdict changed since: the rest of the kernel was as desired then, and only a full plan re-checks it.
    /// </summary>
    public async Task<PassResult> RunPassAsync(bool fullPlan, CancellationToken ct)
    {
        var started = time.GetTimestamp();
        DataplaneState desired;
        IReadOnlyList<RejectedRecord> rejected;
        IReadOnlySet<Model.ServiceKey>? touched = null;
        long revision;
        try
        {
            // The store's revision tells that the store is reachable, and lets a pass without a watch skip an unchanged
            // store (re-reading and decoding every record is most of a pass at 10,000 services). A pass that the watch's
            // events started has its answer in them: asking too cost each node one more etcd round trip per change,
            // before its pass could start. Every other pass asks (the sync period's, one after a trigger without events).
            bool events;
            lock (_observedLock) events = _observed.Count > 0;
            var storeRevision = fullPlan || !FollowingWatch || !events || _mirror is null ? await store.GetRevisionAsync(ct) : 0;
            List<StoreChange> observed;
            lock (_observedLock) (observed, _observed) = (_observed, []);
            if (_mirror is { } mirror && (touched = mirror.Apply(observed)) is not null && (FollowingWatch || mirror.Revision == storeRevision))
            {
                StoreReadsSkipped++;
            }
            else
            {
                // First pass, a Resync (history compacted), an event without its record, or no watch and a moved store.
                _mirror = null; // a failed Apply may have left it half-way
                var snapshot = await store.ListAsync(ct);
                _mirror = StoreMirror.Load(snapshot, dataplane.ProgramsStoredTables);
                touched = null;
                StoreReads++;
            }
            var current = _mirror;
            if (touched is null || touched.Count > 0) status.RecordStoreOrigins(current.Origins);
            if (!ReferenceEquals(_trackedChecks, current.Checks))
            {
                _trackedChecks = current.Checks;
                _checkedServers = current.Checks.Select(c => (c.Service, c.Server)).ToHashSet();
                health?.Track(current.Checks);
            }
            (desired, rejected, revision) = (current.Desired, current.Rejected, current.Revision);
        }
        catch (StoreUnavailableException e)
        {
            LogStoreUnavailable(e.Message);
            status.RecordStoreDown(e.Message);
            Passes.Add(1, new KeyValuePair<string, object?>("result", "store_unavailable"));
            return new PassResult(false, 0, 0, 0, [], time.GetElapsedTime(started), 0);
        }

        ReportRejections(rejected);

        DataplaneState actual;
        try
        {
            actual = await dataplane.ReadAsync(desired, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            LogDataplaneReadFailed(e, dataplane.Name);
            _inSync = null;
            status.RecordPass(revision, desired, planned: 0, applied: 0, failed: 1, e.Message);
            Passes.Add(1, new KeyValuePair<string, object?>("result", "dataplane_error"));
            return new PassResult(true, 0, 0, 1, rejected, time.GetElapsedTime(started), revision);
        }

        // The same store state, the same kernel state (a dataplane answers with the same instance when it
        // found nothing new) and the same verdicts as a pass that converged: nothing to plan. At 10,000
        // services this is what keeps a resync of an unchanged node cheap.
        var healthGeneration = health?.Generation ?? 0;
        var unchanged = _converged is { } c && ReferenceEquals(c.Desired, desired) && ReferenceEquals(c.Actual, actual) && c.Health == healthGeneration;
        var storeDesired = desired;
        var scoped = !unchanged && !fullPlan && FollowingWatch && touched is not null && _inSync == healthGeneration;
        IReadOnlyList<Operation> plan;
        if (unchanged)
        {
            plan = [];
            // Nothing changed since the pass that converged: its weights (health applied) are still the ones wanted,
            // and the status (effective weights on the status page) must not fall back to the store's.
            if (_effective is { } effective) desired = effective;
        }
        else if (scoped)
        {
            // Only the touched services can differ from what the last pass left in the kernel.
            var part = new Dictionary<Model.ServiceKey, ServiceState>(touched!.Count);
            foreach (var key in touched) if (desired.Services.TryGetValue(key, out var s)) part[key] = s;
            var wanted = new DataplaneState(part);
            if (health is not null) wanted = HealthOverlay.Apply(wanted, actual, _checkedServers, health.Verdict);
            plan = Planner.Plan(wanted, actual, touched);
            ScopedPlans++;
            // The status shows effective weights: the last pass's, with the touched services as now wanted.
            if (_effective is { } last)
            {
                var merged = new Dictionary<Model.ServiceKey, ServiceState>(last.Services);
                foreach (var key in touched)
                    if (wanted.Services.TryGetValue(key, out var s)) merged[key] = s;
                    else merged.Remove(key);
                desired = new DataplaneState(merged, sameShapeAs: storeDesired);
            }
        }
        else
        {
            // Health verdicts change weights only: what the store says stays the desired configuration.
            if (health is not null) desired = HealthOverlay.Apply(desired, actual, _checkedServers, health.Verdict);
            plan = Planner.Plan(desired, actual);
        }
        int applied = 0, failed = 0;
        string? lastError = null;
        if (plan.Count > 0)
        {
            // One call for the whole plan: a dataplane that can makes it one kernel transaction.
            var errors = await dataplane.ApplyAsync(plan, ct);
            for (var i = 0; i < plan.Count; i++)
            {
                var op = plan[i];
                if (errors[i] is not { } e)
                {
                    applied++;
                    Operations.Add(1, new("kind", op.GetType().Name), new("result", "ok"));
                    LogApplied(op.ToString());
                    continue;
                }
                failed++;
                lastError ??= $"{op}: {e.Message}"; // the first failure is the cause; later ones may follow from it
                Operations.Add(1, new("kind", op.GetType().Name), new("result", "error"));
                LogApplyFailed(op.ToString(), e.Message);
            }
        }

        _converged = plan.Count == 0 ? (storeDesired, actual, healthGeneration) : null;
        _effective = failed == 0 ? desired : null;
        _inSync = failed == 0 ? healthGeneration : null;
        if (unchanged) PlansSkipped++;
        var elapsed = time.GetElapsedTime(started);
        status.RecordPass(revision, desired, plan.Count, applied, failed, lastError);
        Passes.Add(1, new KeyValuePair<string, object?>("result", failed == 0 ? "ok" : "partial"));
        PassSeconds.Record(elapsed.TotalSeconds);
        if (plan.Count > 0) LogPass(plan.Count, applied, failed, elapsed.TotalMilliseconds);
        return new PassResult(true, plan.Count, applied, failed, rejected, elapsed, revision);
    }

    private void ReportRejections(IReadOnlyList<RejectedRecord> rejected)
    {
        // Log a bad record once, not on every pass.
        var summary = string.Join("\n", rejected.Select(r => $"{r.Key}: {r.Reason}"));
        if (summary == _lastRejections) return;
        _lastRejections = summary;
        foreach (var r in rejected) LogRejected(r.Key, r.Reason);
    }

    [LoggerMessage(EventId = 100, Level = LogLevel.Warning, Message = "Store unreachable, dataplane left as it is: {Reason}")]
    private partial void LogStoreUnavailable(string reason);

    [LoggerMessage(EventId = 101, Level = LogLevel.Error, Message = "Reading the {Dataplane} dataplane failed")]
    private partial void LogDataplaneReadFailed(Exception e, string dataplane);

    [LoggerMessage(EventId = 102, Level = LogLevel.Information, Message = "Applied: {Operation}")]
    private partial void LogApplied(string operation);

    [LoggerMessage(EventId = 103, Level = LogLevel.Error, Message = "Failed: {Operation}: {Reason}")]
    private partial void LogApplyFailed(string operation, string reason);

    [LoggerMessage(EventId = 104, Level = LogLevel.Information, Message = "Reconciled: {Planned} planned, {Applied} applied, {Failed} failed in {Milliseconds:0.0} ms")]
    private partial void LogPass(int planned, int applied, int failed, double milliseconds);

    [LoggerMessage(EventId = 105, Level = LogLevel.Warning, Message = "Store record {Key} cannot be programmed: {Reason}")]
    private partial void LogRejected(string key, string reason);
}
