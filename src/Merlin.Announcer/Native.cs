using System.Runtime.InteropServices;

namespace Merlin.Announcer;

/// <summary>The libc calls the engine supervisors (keepalived, gobgpd) need: signals by PID and a FIFO.</summary>
internal static partial class Native
{
    public const int SigHup = 1, SigKill = 9, SigTerm = 15;

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false when no such process exists.</summary>
    public static bool Signal(int pid, int signal)
    {
        if (pid <= 1) throw new ArgumentOutOfRangeException(nameof(pid), pid, "refusing to signal PID 0, 1 or a group");
        return Kill(pid, signal) == 0;
    }

    public static void MakeFifo(string path)
    {
        if (MkFifo(path, Convert.ToUInt32("600", 8)) != 0)
            throw new IOException($"mkfifo {path}: {Marshal.GetLastPInvokeErrorMessage()}");
    }

    public static bool IsAlive(int pid) => pid > 0 && Directory.Exists($"/proc/{pid}");

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int sig);

    [LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MkFifo(string path, uint mode);
}
