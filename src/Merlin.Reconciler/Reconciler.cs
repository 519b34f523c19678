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
/// One reconcile pass: read the store, read the dataplane, plan, apply. Store unreachable ⇒ the
/// dataplane is not touched. A failed operation is logged and counted and the pass goes on with
/// operations that do not depend on it; the loop retries the pass with backoff.
/// </summary>
public sealed partial class Reconciler(IStore store, IDataplane dataplane, ReconcilerStatus status, ILogger<Reconciler> logger, TimeProvider time, IServerHealth? health = null)
{
    private static readonly Meter Meter = new("merlin");
    private static readonly Counter<long> Passes = Meter.CreateCounter<long>("reconcile_passes", description: "Reconcile passes by result");
    private static readonly Counter<long> Operations = Meter.CreateCounter<long>("dataplane_operations", description: "Dataplane operations by kind and result");
    private static readonly Histogram<double> PassSeconds = Meter.CreateHistogram<double>("reconcile_duration_seconds", null, "Duration of a reconcile pass");

    private string _lastRejections = "";
    private (long Revision, DataplaneState Desired, IReadOnlyList<RejectedRecord> Rejected, HashSet<(Model.ServiceKey, Model.RealServerKey)> Checked)? _lastDesired;

    /// <summary>The inputs of the last pass that converged, to recognise a pass with nothing to do.</summary>
    private (DataplaneState Desired, DataplaneState Actual, long Health)? _converged;
    private DataplaneState? _convergedEffective;

    /// <summary>Passes that found the store unchanged and reused the desired state of the one before.</summary>
    public long StoreReadsSkipped { get; private set; }

    /// <summary>Passes whose inputs were those of the last converged pass, so planning was skipped.</summary>
    public long PlansSkipped { get; private set; }

    public async Task<PassResult> RunPassAsync(CancellationToken ct)
    {
        var started = time.GetTimestamp();
        DataplaneState desired;
        IReadOnlyList<RejectedRecord> rejected;
        HashSet<(Model.ServiceKey, Model.RealServerKey)> checkedServers;
        long revision;
        try
        {
            // A resync of an unchanged store asks only for its revision: re-reading and decoding every
            // record is most of a pass at 10,000 services, and the kernel side is audited anyway.
            revision = await store.GetRevisionAsync(ct);
            if (_lastDesired is { } last && last.Revision == revision)
            {
                (desired, rejected, checkedServers) = (last.Desired, last.Rejected, last.Checked);
                StoreReadsSkipped++;
            }
            else
            {
                var snapshot = await store.ListAsync(ct);
                (desired, rejected, var checks) = DesiredState.Build(snapshot, dataplane.ProgramsStoredTables);
                // Who wrote the records, from this read: it changes only with the store, as the read does.
                status.RecordStoreOrigins(StoreOrigins.Count(snapshot));
                revision = snapshot.Revision;
                checkedServers = checks.Select(c => (c.Service, c.Server)).ToHashSet();
                health?.Track(checks);
                _lastDesired = (revision, desired, rejected, checkedServers);
            }
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
        // Health verdicts change weights only: what the store says stays the desired configuration.
        if (health is not null && !unchanged) desired = HealthOverlay.Apply(desired, actual, checkedServers, health.Verdict);
        // Nothing changed since the pass that converged: its weights (health applied) are still the ones wanted,
        // and the status (effective weights on the status page) must not fall back to the store's.
        else if (unchanged && _convergedEffective is { } effective) desired = effective;
        IReadOnlyList<Operation> plan = unchanged ? [] : Planner.Plan(desired, actual);
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
        _convergedEffective = plan.Count == 0 ? desired : null;
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
