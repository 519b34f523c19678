using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Merlin.Health;

/// <summary>
/// The libc calls the HTTP probe's event loop makes: its own epoll set, an eventfd to wake it, and
/// non-blocking TCP sockets used by file descriptor. Failures are errno values, never exceptions.
/// </summary>
internal static unsafe partial class ProbeInterop
{
    public const int EpollCloexec = 0x80000;
    public const int EpollCtlAdd = 1, EpollCtlDel = 2, EpollCtlMod = 3;
    public const uint EpollIn = 0x001, EpollOut = 0x004, EpollErr = 0x008, EpollHup = 0x010, EpollRdHup = 0x2000;
    public const int EfdNonblock = 0x800, EfdCloexec = 0x80000;
    public const int SockStream = 1, SockNonblock = 0x800, SockCloexec = 0x80000;
    public const int AfInet = 2, AfInet6 = 10;
    public const int IpProtoTcp = 6, TcpNoDelay = 1;
    public const int SolSocket = 1, SoError = 4;
    public const int MsgNoSignal = 0x4000;
    public const int EIntr = 4, EAgain = 11, EInProgress = 115;

    /// <summary>
    /// struct epoll_event is packed on x86-64 (12 bytes: events, then data at offset 4) and naturally
    /// aligned elsewhere (16 bytes, data at offset 8).
    /// </summary>
    public static readonly int EventSize = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    public static readonly int EventDataOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    [LibraryImport("libc", EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport("libc", EntryPoint = "epoll_ctl", SetLastError = true)]
    public static partial int EpollCtl(int epfd, int op, int fd, byte* ev);

    [LibraryImport("libc", EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, byte* events, int maxEvents, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "gettid")]
    public static partial int GetTid();

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "connect", SetLastError = true)]
    public static partial int Connect(int fd, byte* address, int length);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    public static partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, byte* value, int length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(int fd, int level, int name, byte* value, int* length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>Registers or changes <paramref name="fd"/>'s interest; the event carries <paramref name="data"/>.</summary>
    public static int Control(int epfd, int op, int fd, uint events, ulong data)
    {
        var ev = stackalloc byte[16];
        *(uint*)ev = events;
        *(ulong*)(ev + EventDataOffset) = data;
        return EpollCtl(epfd, op, fd, ev);
    }

    /// <summary>
    /// The name a failed socket call had in the probe before the event loop (the <see cref="SocketError"/>
    /// the runtime maps the errno to), so check details stay the same: "ConnectionRefused", "TimedOut"…
    /// </summary>
    public static string ErrorName(int errno) => errno switch
    {
        111 => nameof(SocketError.ConnectionRefused),
        104 => nameof(SocketError.ConnectionReset),
        110 => nameof(SocketError.TimedOut),
        113 => nameof(SocketError.HostUnreachable),
        101 => nameof(SocketError.NetworkUnreachable),
        100 => nameof(SocketError.NetworkDown),
        103 => nameof(SocketError.ConnectionAborted),
        99 => nameof(SocketError.AddressNotAvailable),
        97 => nameof(SocketError.AddressFamilyNotSupported),
        98 => nameof(SocketError.AddressAlreadyInUse),
        13 or 1 => nameof(SocketError.AccessDenied),
        32 => nameof(SocketError.Shutdown),
        24 or 23 => nameof(SocketError.TooManyOpenSockets),
        105 or 12 => nameof(SocketError.NoBufferSpaceAvailable),
        _ => $"errno {errno}",
    };
}
