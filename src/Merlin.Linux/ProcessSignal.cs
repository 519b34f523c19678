namespace Merlin.Linux;

/// <summary>Signals to a process by PID (the engine supervisors' keepalived and gobgpd).</summary>
public static class ProcessSignal
{
    public const int HangUp = 1, Kill = 9, Terminate = 15;

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false when no such process exists.</summary>
    public static bool Send(int pid, int signal)
    {
        if (pid <= 1) throw new ArgumentOutOfRangeException(nameof(pid), pid, "refusing to signal PID 0, 1 or a group");
        return Libc.Kill(pid, signal) == 0;
    }

    /// <summary>Whether a process (or a zombie) has this PID.</summary>
    public static bool IsAlive(int pid) => pid > 0 && Directory.Exists($"/proc/{pid}");
}
