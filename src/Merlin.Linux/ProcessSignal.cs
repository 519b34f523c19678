using System.Runtime.InteropServices;

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

/// <summary>Named pipes.</summary>
public static class Fifo
{
    /// <summary>mkfifo(3) with mode 0600; throws <see cref="IOException"/> naming the path and the reason.</summary>
    public static void Create(string path)
    {
        if (Libc.MkFifo(path, Convert.ToUInt32("600", 8)) != 0)
            throw new IOException($"mkfifo {path}: {Marshal.GetLastPInvokeErrorMessage()}");
    }
}

/// <summary>Anonymous files in memory (memfd_create(2)), readable by path as /dev/fd/N.</summary>
public static class MemoryFile
{
    private const uint Cloexec = 1;   // MFD_CLOEXEC

    /// <summary>A new close-on-exec memory file's descriptor; throws <see cref="IOException"/> with the errno.</summary>
    public static int Create(string name)
    {
        var fd = Libc.MemfdCreate(name, Cloexec);
        if (fd < 0) throw new IOException($"memfd_create failed: {Errno.Name(Marshal.GetLastPInvokeError())}");
        return fd;
    }
}

/// <summary>The C heap (glibc's malloc), which native libraries in the process use.</summary>
public static class Heap
{
    /// <summary>Returns free heap memory to the kernel (malloc_trim(0)): a large native parse leaves its freed memory in the heap.</summary>
    public static void Trim() => Libc.MallocTrim(0);
}
