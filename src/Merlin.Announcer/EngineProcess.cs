using System.Diagnostics;
using Merlin.Netlink;

namespace Merlin.Announcer;

/// <summary>
/// What the supervisors of an announcer's engine (keepalived, gobgpd) share: restart backoff, pid files,
/// recognising an engine by its command line, stopping a leftover one and stopping a child by PID.
/// </summary>
internal static class EngineProcess
{
    public static readonly TimeSpan MinBackoff = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);
    /// <summary>An engine that ran this long before dying is restarted after the shortest backoff again.</summary>
    public static readonly TimeSpan StableRun = TimeSpan.FromSeconds(60);
    /// <summary>How long SIGTERM has before SIGKILL.</summary>
    public static readonly TimeSpan StopWait = TimeSpan.FromSeconds(5);

    /// <summary>1 s doubling to 30 s.</summary>
    public static TimeSpan NextBackoff(TimeSpan backoff) => backoff * 2 > MaxBackoff ? MaxBackoff : backoff * 2;

    /// <summary>Waits, or returns false when <paramref name="ct"/> ends first.</summary>
    public static async Task<bool> DelayAsync(TimeSpan delay, TimeProvider time, CancellationToken ct)
    {
        try { await Task.Delay(delay, time, ct); return true; }
        catch (OperationCanceledException) { return false; }
    }

    public static int? ReadPid(string path)
    {
        try { return int.TryParse(File.ReadAllText(path).Trim(), out var pid) && pid > 1 ? pid : null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>True when <paramref name="pid"/> runs <paramref name="program"/> with <paramref name="argument"/> (this daemon's config or socket).</summary>
    public static bool Runs(int pid, string program, string argument)
    {
        try
        {
            var args = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
            return args.Any(a => a == program || a.EndsWith("/" + program, StringComparison.Ordinal)) && args.Contains(argument);
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>True when <paramref name="pid"/> has exited and waits for its parent to collect it.</summary>
    public static bool IsZombie(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var end = stat.LastIndexOf(')');
            return end > 0 && end + 2 < stat.Length && stat[end + 2] is 'Z' or 'X';
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>SIGTERM to <paramref name="pid"/>, SIGKILL if it is still alive after <see cref="StopWait"/>.</summary>
    public static async Task StopPidAsync(int pid, CancellationToken ct)
    {
        ProcessSignal.Send(pid, ProcessSignal.Terminate);
        var clock = Stopwatch.StartNew();
        while (ProcessSignal.IsAlive(pid) && !IsZombie(pid) && clock.Elapsed < StopWait) await Task.Delay(50, ct);
        if (!ProcessSignal.IsAlive(pid) || IsZombie(pid)) return;
        ProcessSignal.Send(pid, ProcessSignal.Kill);
        clock.Restart();
        while (ProcessSignal.IsAlive(pid) && !IsZombie(pid) && clock.Elapsed < TimeSpan.FromSeconds(1)) await Task.Delay(20, ct);
    }

    /// <summary>SIGTERM to a child and wait for it; true when it stopped, false when it had to be killed after <see cref="StopWait"/>.</summary>
    public static async Task<bool> TerminateAsync(Process p, CancellationToken ct)
    {
        if (p.HasExited) return true;
        ProcessSignal.Send(p.Id, ProcessSignal.Terminate);
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(StopWait);
        try
        {
            await p.WaitForExitAsync(wait.Token);
            return true;
        }
        catch (OperationCanceledException)
        {
            ProcessSignal.Send(p.Id, ProcessSignal.Kill);
            return false;
        }
    }
}
