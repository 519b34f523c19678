using System.Runtime.InteropServices;

namespace Merlin.Linux;

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
