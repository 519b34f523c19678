using System.Runtime.InteropServices;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>The few libc calls the netlink reader needs.</summary>
internal static unsafe partial class Native
{
    public const int AF_NETLINK = 16;
    public const int SOCK_RAW = 3;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int NETLINK_NETFILTER = 12;
    public const int SOL_SOCKET = 1;
    public const int SO_RCVTIMEO = 20;
    public const int SO_SNDTIMEO = 21;
    public const int SO_RCVBUF = 8;
    public const int SO_SNDBUF = 7;
    public const int SO_SNDBUFFORCE = 32;
    public const int SOL_NETLINK = 270;
    public const int NETLINK_CAP_ACK = 10;
    public const int MSG_DONTWAIT = 0x40;
    public const int EAGAIN = 11;

    [StructLayout(LayoutKind.Sequential)]
    public struct SockaddrNl
    {
        public ushort Family;
        public ushort Pad;
        public uint Pid;
        public uint Groups;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Timeval
    {
        public long Seconds;
        public long Microseconds;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int bind(int fd, SockaddrNl* address, int length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int getsockname(int fd, SockaddrNl* address, int* length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, void* value, int length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int name, void* value, int* length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint send(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);
}
