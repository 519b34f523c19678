using System.Runtime.InteropServices;

namespace Merlin.Netlink;

/// <summary>
/// The few libc calls a netlink socket needs. System.Net.Sockets.Socket cannot do this on .NET 10:
/// its AddressFamily has no Netlink member, (AddressFamily)16 fails with "Address family not supported"
/// because the platform layer maps only the families it knows, and a socket wrapped from a foreign fd
/// reports AddressFamily.Unknown and cannot bind a sockaddr_nl. A handful of calls through LibraryImport
/// (source-generated, trimming/AOT-safe) are smaller than working around that.
/// </summary>
internal static unsafe partial class Interop
{
    public const int SockRaw = 3;
    public const int SockCloexec = 0x80000;

    public const int SolSocket = 1;
    public const int SoSndbuf = 7;
    public const int SoRcvbuf = 8;
    public const int SoRcvtimeo = 20;   // SO_RCVTIMEO_OLD: struct timeval of two longs on 64-bit Linux
    public const int SoSndtimeo = 21;
    public const int SoSndbufforce = 32;
    public const int SoRcvbufforce = 33;

    public const int SolNetlink = 270;
    public const int NetlinkCapAck = 10;
    public const int NetlinkExtAck = 11;

    public const int MsgTrunc = 0x20;

    [StructLayout(LayoutKind.Sequential)]
    public struct SockaddrNl
    {
        public ushort Family;
        public ushort Pad;
        public uint PortId;
        public uint Groups;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Timeval
    {
        public long Seconds;
        public long Microseconds;
    }

    public const int CloneNewNet = 0x40000000;

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    /// <summary>stat(2); struct stat starts with st_dev and st_ino (64 bits each) on x86-64 and arm64.</summary>
    [LibraryImport("libc", EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Stat(string path, byte* buffer);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, SockaddrNl* address, uint length);

    [LibraryImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, SockaddrNl* address, uint* length);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport("libc", EntryPoint = "sendto", SetLastError = true)]
    public static partial nint SendTo(int fd, byte* buffer, nuint length, int flags, SockaddrNl* address, uint addressLength);

    [LibraryImport("libc", EntryPoint = "recvfrom", SetLastError = true)]
    public static partial nint RecvFrom(int fd, byte* buffer, nuint length, int flags, SockaddrNl* address, uint* addressLength);
}
