using Merlin.Model;

namespace Merlin.Announcer;

/// <summary>How one run of an engine ended: whether its process had started, whether it failed to start, how long it ran, and why it ended.</summary>
/// <param name="ExitCode">The child's exit code, when it was our child and exited.</param>
internal sealed record EngineRun(bool Started, bool StartFailed, TimeSpan Ran, string Why, int? ExitCode = null)
{
    /// <summary>It could not be started (or did not become ready); <paramref name="processStarted"/> when a process ran and was stopped.</summary>
    public static EngineRun FailedToStart(string why, bool processStarted) => new(processStarted, true, TimeSpan.Zero, why);

    /// <summary>It ran for <paramref name="ran"/> and ended.</summary>
    public static EngineRun Ended(TimeSpan ran, string why, int? exitCode = null) => new(true, false, ran, why, exitCode);
}

/// <summary>
/// The supervisor loop of an announcer's engine (keepalived, gobgpd): run it, and when a run ends (the engine
/// died, stopped answering, or could not start) wait a backoff and run it again, until stopped. The backoff
/// (<see cref="EngineProcess.MinBackoff"/> doubling to <see cref="EngineProcess.MaxBackoff"/>, with jitter)
/// starts over after a run longer than <see cref="EngineProcess.StableRun"/>; every run whose process had
/// started counts as a restart (<c>merlin_announcer_restarts_total</c>).
/// </summary>
internal sealed class EngineSupervisor(TimeProvider time)
{
    private long _restarts;

    /// <summary>Runs that started a process and ended.</summary>
    public long Restarts => Interlocked.Read(ref _restarts);

    /// <summary>
    /// Calls <paramref name="runOnce"/> until <paramref name="ct"/> ends; it returns when its run ended and throws
    /// <see cref="OperationCanceledException"/> when stopped. <paramref name="beforeWait"/> reports the end and the
    /// delay before the next run (the restart is already counted); <paramref name="beforeRestart"/>, if any, runs
    /// after the delay.
    /// </summary>
    public async Task RunAsync(Func<CancellationToken, Task<EngineRun>> runOnce, Action<EngineRun, TimeSpan> beforeWait,
        CancellationToken ct, Func<CancellationToken, Task>? beforeRestart = null)
    {
        var backoff = new Backoff(EngineProcess.MinBackoff, EngineProcess.MaxBackoff);
        while (!ct.IsCancellationRequested)
        {
            EngineRun run;
            try { run = await runOnce(ct); }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            if (run.Ran > EngineProcess.StableRun) backoff.Reset();
            if (run.Started) Interlocked.Increment(ref _restarts);
            var delay = backoff.Next();
            beforeWait(run, delay);
            try
            {
                await Task.Delay(delay, time, ct);
                if (beforeRestart is not null) await beforeRestart(ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
        }
    }
}
