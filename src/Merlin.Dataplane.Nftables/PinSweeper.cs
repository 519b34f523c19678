using Merlin.Dataplane.Nftables.Kernel;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Deletes stale pins (<see cref="PinSweep"/> says which) in the background, so a change that takes a server out
/// never waits for a dump of the flow maps: at a full map that is seconds, because the kernel walks the map from
/// its start again for every message of a dump (docs/performance.md). Each flow map is dumped outside the
/// dataplane's lock on a socket of its own; its stale pins are picked against the programmed layout and deleted
/// under the lock, so a pass never sees half a sweep. A sweep that deleted pins deletes the same keys once more
/// after <see cref="Settle"/>, passing over those that are gone: a packet that read a pin before the deletion
/// refreshes it back after, under its own key (Linux 6.3 and later; an older kernel is read again instead).
/// </summary>
internal sealed partial class PinSweeper(NftablesOptions options, INftables nft, SemaphoreSlim gate, Func<ProgrammedState?> programmed, ILogger logger, Phases phases)
    : IDisposable
{
    /// <summary>Far longer than a packet's pass through the pinned-flow rule (under RCU, microseconds).</summary>
    internal static readonly TimeSpan Settle = TimeSpan.FromMilliseconds(50);

    private static readonly (bool V6, string Set)[] FlowMaps = [(false, "flows4"), (true, "flows6")];

    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stopping = new();
    private Task _running = Task.CompletedTask;
    private bool _again;
    private bool _clean;
    private bool _destroyRefused;

    /// <summary>Sweeps now, or again right after the sweep running (which may have read the maps before this change).</summary>
    public void Request()
    {
        lock (_lock)
        {
            _clean = false;
            if (!_running.IsCompleted) _again = true;
            else _running = Task.Run(RunAsync);
        }
    }

    /// <summary>Sweeps unless the last sweep found nothing left or one is running: at start (a previous run may have died between a change and its sweep), and after a sweep failed.</summary>
    public void RequestUnlessClean()
    {
        lock (_lock)
            if (!_clean && _running.IsCompleted) _running = Task.Run(RunAsync);
    }

    /// <summary>The sweep running now, or a completed task (tests and the benchmark wait for it).</summary>
    public Task Running
    {
        get { lock (_lock) return _running; }
    }

    public void Dispose()
    {
        _stopping.Cancel();
        try { Running.Wait(TimeSpan.FromSeconds(10)); }
        catch (AggregateException) { }
    }

    private async Task RunAsync()
    {
        while (true)
        {
            bool swept = false;
            try
            {
                await SweepAsync(_stopping.Token);
                swept = true;
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                LogFailed(e.Message);
            }
            lock (_lock)
            {
                if (!_again)
                {
                    _clean = swept;
                    return;
                }
                _again = false;
            }
        }
    }

    private async Task SweepAsync(CancellationToken ct)
    {
        List<(string Set, List<byte[]> Keys)> deleted;
        using (phases.Measure("sweep pins")) deleted = await PassAsync(ct);
        if (deleted.Count == 0) return;
        using (phases.Measure("sweep pins: again"))
        {
            await Task.Delay(Settle, ct);
            if (!await DeleteAgainAsync(deleted, ct)) await PassAsync(ct);
        }
        LogSwept(deleted.Sum(d => d.Keys.Count));
    }

    /// <summary>Both flow maps once: read, then under the lock the stale pins picked and deleted. Returns what was.</summary>
    private async Task<List<(string Set, List<byte[]> Keys)>> PassAsync(CancellationToken ct)
    {
        var deleted = new List<(string, List<byte[]>)>();
        foreach (var (v6, set) in FlowMaps)
        {
            for (int attempt = 1; ; attempt++)
            {
                var pins = await nft.ReadElementsAsync("netdev", options.DsrTable, set, ct);
                if (pins.Count == 0) break;
                await gate.WaitAsync(ct);
                try
                {
                    if (programmed() is not { } state) return deleted;
                    var stale = PinSweep.Stale(v6, pins, state.Layout.Pinned);
                    if (stale.Count == 0) break;
                    if (await DeleteAsync(state, set, stale, evenIfGone: false, ct))
                    {
                        deleted.Add((set, stale));
                        break;
                    }
                }
                finally
                {
                    gate.Release();
                }
                // A pin expired between the read and the deletion, and that transaction deleted nothing: read again.
                if (attempt == 3) throw new InvalidOperationException($"{set}: pins kept expiring while they were deleted");
            }
        }
        return deleted;
    }

    /// <summary>The keys deleted before, deleted again where a packet put them back; false if the kernel cannot pass over gone keys.</summary>
    private async Task<bool> DeleteAgainAsync(List<(string Set, List<byte[]> Keys)> deleted, CancellationToken ct)
    {
        if (_destroyRefused) return false;
        await gate.WaitAsync(ct);
        try
        {
            if (programmed() is not { } state) return true;
            foreach (var (set, keys) in deleted) await DeleteAsync(state, set, keys, evenIfGone: true, ct);
            return true;
        }
        catch (NotSupportedException)
        {
            _destroyRefused = true;
            return false;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Under the lock. When only our own transactions moved the generation since the dataplane's last look, what it checked is still as checked.</summary>
    private async Task<bool> DeleteAsync(ProgrammedState state, string set, List<byte[]> keys, bool evenIfGone, CancellationToken ct)
    {
        var before = await nft.GenerationAsync(ct);
        if (await nft.DeleteElementsAsync("netdev", options.DsrTable, set, keys, evenIfGone, ct) is not { } commits) return false;
        var after = await nft.GenerationAsync(ct);
        if (before == state.Generation && after == before + (uint)commits) state.Advance(before, after);
        return true;
    }

    [LoggerMessage(EventId = 418, Level = LogLevel.Information, Message = "nftables: {Count} pinned flows lost their pin: their server left their service")]
    private partial void LogSwept(int count);

    [LoggerMessage(EventId = 419, Level = LogLevel.Warning, Message = "nftables: the pins of servers that left their service could not be deleted ({Reason}); their flows still go to them; the next resync tries again")]
    private partial void LogFailed(string reason);
}
