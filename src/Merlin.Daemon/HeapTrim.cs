using Merlin.Reconciler;

namespace Merlin.Daemon;

/// <summary>
/// Gives memory back after a pass that read the whole store. That read holds the store's raw records and their
/// decoded form at once (at 100,000 servers the heap grows to about twice what the daemon keeps), and the GC
/// otherwise keeps the grown heap committed for good: an aggressive, compacting collection after it returns what
/// only the read needed (docs/performance.md, "Daemon memory"). Full reads are rare while the watch is followed
/// (start, a resync); without a watch every changed pass reads, so trims are at most one per <see cref="MinInterval"/>.
/// </summary>
internal sealed partial class HeapTrim(ReconcileLoop loop, ReconcilePass pass, TimeProvider time, ILogger<HeapTrim> logger) : IHostedService
{
    /// <summary>A full collection blocks the process for tens of milliseconds at this size: never more often than this.</summary>
    internal static readonly TimeSpan MinInterval = TimeSpan.FromMinutes(1);

    private long _trimmedReads;
    private long? _lastTrim;

    /// <summary>Collections made; tests read it.</summary>
    public long Trims { get; private set; }

    public Task StartAsync(CancellationToken ct)
    {
        loop.PassCompleted += OnPass;
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken ct)
    {
        loop.PassCompleted -= OnPass;
        return Task.CompletedTask;
    }

    // On the loop's task, between passes: the next pass waits for the collection instead of racing it.
    private void OnPass(PassResult result)
    {
        var reads = pass.StoreReads;
        if (reads == _trimmedReads) return;
        if (_lastTrim is { } last && time.GetElapsedTime(last) < MinInterval) return; // a later pass trims
        var before = GC.GetTotalMemory(forceFullCollection: false);
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        (_trimmedReads, _lastTrim) = (reads, time.GetTimestamp());
        Trims++;
        LogTrimmed(before / 1048576.0, GC.GetTotalMemory(forceFullCollection: false) / 1048576.0, GC.GetGCMemoryInfo().TotalCommittedBytes / 1048576.0);
    }

    [LoggerMessage(EventId = 140, Level = LogLevel.Debug, Message = "Heap compacted after a full store read: {Before:0} MiB allocated before, {After:0} MiB after, {Committed:0} MiB committed")]
    private partial void LogTrimmed(double before, double after, double committed);
}
