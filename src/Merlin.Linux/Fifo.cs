using System.Runtime.InteropServices;

namespace Merlin.Linux;

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
