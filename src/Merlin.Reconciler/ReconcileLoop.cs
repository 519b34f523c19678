using System.Threading.Channels;
using Merlin.Model;
using Merlin.Store;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Merlin.Reconciler;

public sealed class ReconcilerOptions
{
    /// <summary>Full resync period: also what repairs changes made to the kernel behind our back.</summary>
    public TimeSpan SyncPeriod { get; set; } = TimeSpan.FromSeconds(30);
    public TimeSpan RetryMin { get; set; } = TimeSpan.FromMilliseconds(200);
    public TimeSpan RetryMax { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The least time between the starts of two passes that store changes trigger. A change after a quiet spell is
    /// applied at once; the changes that follow within the interval (an agent registering, a script adding 1,000
    /// servers) wait for its end and cost one more pass, and one kernel transaction (kube-proxy's minSyncPeriod).
    /// </summary>
    public TimeSpan MinPassInterval { get; set; } = TimeSpan.FromMilliseconds(100);
}

/// <summary>
/// Drives <see cref="ReconcilePass"/>: at startup, on every store change (watch), on demand, and every
/// sync period. The watch's events go to the reconciler, which applies them to the store state it keeps,
/// and a pass they trigger plans only the services they touched; the first pass, the sync period's and
/// the one after a failure plan everything. Failed passes are retried with exponential backoff.
/// Triggers coalesce: ten changes in a burst cost one or two passes.
/// </summary>
public sealed partial class ReconcileLoop(ReconcilePass reconciler, IStore store, ReconcilerOptions options, ILogger<ReconcileLoop> logger, TimeProvider time)
    : BackgroundService
{
    private readonly Channel<bool> _triggers = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly TaskCompletionSource<long> _firstRevision = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _passes;
    private long _lastPassStarted;

    /// <summary>Completed passes; tests wait on it.</summary>
    public long Passes => Interlocked.Read(ref _passes);

    public event Action<PassResult>? PassCompleted;

    public void Trigger() => _triggers.Writer.TryWrite(true);

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        var watch = WatchAsync(ct);
        var backoff = new Backoff(options.RetryMin, options.RetryMax);
        var fullPlan = true;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                _triggers.Reader.TryRead(out _); // this pass covers any trigger already queued
                PassResult result;
                _lastPassStarted = time.GetTimestamp();
                try
                {
                    result = await reconciler.RunPassAsync(fullPlan, ct);
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
                catch (Exception e)
                {
                    // Never let a bug in one pass kill the loop: report and retry.
                    LogPassCrashed(e);
                    result = new PassResult(false, 0, 0, 1, [], TimeSpan.Zero, 0);
                }
                if (result.StoreReachable) _firstRevision.TrySetResult(result.Revision);
                Interlocked.Increment(ref _passes);
                PassCompleted?.Invoke(result);

                TimeSpan wait;
                if (result.Converged) { wait = options.SyncPeriod; backoff.Reset(); }
                else wait = backoff.Next();
                // Only a change after a pass that converged may be planned alone; a timer's pass checks everything.
                fullPlan = !await WaitForTriggerAsync(wait, ct) || !result.Converged;
            }
        }
        finally
        {
            await watch.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    /// <summary>Waits for a trigger or <paramref name="wait"/>; true if a trigger came first.</summary>
    private async Task<bool> WaitForTriggerAsync(TimeSpan wait, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(wait); // CancelAfter uses real time; the delay below honours the injected clock
        var delay = Task.Delay(wait, time, timeout.Token);
        var trigger = _triggers.Reader.WaitToReadAsync(timeout.Token).AsTask();
        var woken = await Task.WhenAny(delay, trigger);
        await timeout.CancelAsync();
        var rest = options.MinPassInterval - time.GetElapsedTime(_lastPassStarted);
        if (woken == trigger && !ct.IsCancellationRequested && rest > TimeSpan.Zero)
        {
            try { await Task.Delay(rest, time, ct); } catch (OperationCanceledException) { }
        }
        return woken == trigger;
    }

    private async Task WatchAsync(CancellationToken ct)
    {
        long revision;
        try { revision = await _firstRevision.Task.WaitAsync(ct); }
        catch (OperationCanceledException) { return; }
        var backoff = new Backoff(options.RetryMin, options.RetryMax);
        while (!ct.IsCancellationRequested)
        {
            string? failure = null;
            try
            {
                // Resumed from the last revision seen, so no change is missed; until then a pass re-reads a moved store.
                reconciler.FollowingWatch = true;
                await foreach (var change in store.WatchAsync(revision, ct))
                {
                    backoff.Reset();
                    if (change.Kind == StoreChangeKind.Resync) LogHistoryCompacted(change.Revision, revision);
                    reconciler.Observe(change);
                    // After a Resync the pass this triggers re-lists everything; its revision is where history resumes.
                    revision = Math.Max(revision, change.Revision);
                    Trigger();
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                failure = e.Message;
            }
            finally
            {
                reconciler.FollowingWatch = false;
            }
            var delay = backoff.Next();
            if (failure is not null) LogWatchFailed(failure, delay.TotalMilliseconds);
            try { await Task.Delay(delay, time, ct); } catch (OperationCanceledException) { return; }
            Trigger(); // whatever happened while the watch was down is picked up by a full pass
        }
    }

    [LoggerMessage(EventId = 110, Level = LogLevel.Error, Message = "Reconcile pass failed unexpectedly; retrying")]
    private partial void LogPassCrashed(Exception e);

    [LoggerMessage(EventId = 112, Level = LogLevel.Warning, Message = "Store history was compacted through revision {Compacted}, past this node's watch at {Revision}: re-reading the whole store")]
    private partial void LogHistoryCompacted(long compacted, long revision);

    [LoggerMessage(EventId = 111, Level = LogLevel.Warning, Message = "Store watch ended: {Reason}; resuming in {Milliseconds:0} ms")]
    private partial void LogWatchFailed(string reason, double milliseconds);
}
