using System.Runtime.InteropServices;

namespace Merlin.Lab;

/// <summary>Signals by PID (the lab never stops anything by name).</summary>
public static class Signal
{
    public const int Hup = 1, Int = 2, Kill = 9, Term = 15, Cont = 18, Stop = 19;

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false when no such process exists.</summary>
    public static bool Send(int pid, int signal)
    {
        if (pid <= 1) throw new ArgumentOutOfRangeException(nameof(pid), pid, "refusing to signal PID 0, 1 or a group");
        return SysKill(pid, signal) == 0;
    }

    /// <summary>True while /proc has the process (a zombie counts: it is still there to be reaped).</summary>
    public static bool IsAlive(int pid) => pid > 0 && Directory.Exists($"/proc/{pid}");

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int sig);
}
