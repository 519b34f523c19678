using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>
/// Every libc function Merlin calls, each bound once (source-generated LibraryImport: trimming/AOT-safe),
/// for the rest of this project to wrap: netlink sockets, namespace windows, the HTTP probe's epoll loop,
/// the engine supervisors' signals and FIFO, libnftables' script file. Other projects use the wrappers
/// (<see cref="Epoll"/>, <see cref="EventFd"/>, <see cref="FileDescriptor"/>, <see cref="PosixSocket"/>,
/// <see cref="ProcessSignal"/>, <see cref="Fifo"/>, <see cref="MemoryFile"/>, <see cref="Heap"/>), never these.
/// <para>
/// Why not System.Net.Sockets.Socket for netlink: on .NET 10 its AddressFamily has no Netlink member,
/// (AddressFamily)16 fails with "Address family not supported" because the platform layer maps only the
/// families it knows, and a socket wrapped from a foreign fd reports AddressFamily.Unknown and cannot bind a
/// sockaddr_nl.
/// </para>
/// <para>
/// setns, socket, open and __errno_location are also read as raw function pointers (<see cref="Window"/>): a
/// namespace window may run native code only, and a LibraryImport stub resolves its export in managed code
/// on its first call.
/// </para>
/// </summary>
internal static unsafe partial class Libc
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

    public const int MsgDontwait = 0x40;
    public const int MsgTrunc = 0x20;

    public const int CloneNewNet = 0x40000000;

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

    // ---- sockets ----

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, SockaddrNl* address, uint length);

    [LibraryImport("libc", EntryPoint = "connect", SetLastError = true)]
    public static partial int Connect(int fd, byte* address, uint length);

    [LibraryImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, SockaddrNl* address, uint* length);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    public static partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "sendto", SetLastError = true)]
    public static partial nint SendTo(int fd, byte* buffer, nuint length, int flags, SockaddrNl* address, uint addressLength);

    [LibraryImport("libc", EntryPoint = "recvfrom", SetLastError = true)]
    public static partial nint RecvFrom(int fd, byte* buffer, nuint length, int flags, SockaddrNl* address, uint* addressLength);

    // ---- file descriptors ----

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>stat(2); struct stat starts with st_dev and st_ino (64 bits each) on x86-64 and arm64.</summary>
    [LibraryImport("libc", EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Stat(string path, byte* buffer);

    [LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MkFifo(string path, uint mode);

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    // ---- event loop ----

    [LibraryImport("libc", EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport("libc", EntryPoint = "epoll_ctl", SetLastError = true)]
    public static partial int EpollCtl(int epfd, int op, int fd, byte* ev);

    [LibraryImport("libc", EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, byte* events, int maxEvents, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    // ---- processes, threads, memory ----

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "gettid")]
    public static partial int GetTid();

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    public static partial int MallocTrim(nuint pad);

    /// <summary>
    /// The functions a namespace window calls, as raw function pointers resolved up front: inside a window
    /// nothing managed may run (see <see cref="NetworkNamespace"/>). Read each into a local before entering.
    /// </summary>
    public static class Window
    {
        // Before the function pointers below: static fields are initialised in the order they are written.
        private static readonly nint Library = NativeLibrary.Load("libc.so.6");

        public static readonly delegate* unmanaged<int, int, int> SetNs = (delegate* unmanaged<int, int, int>)NativeLibrary.GetExport(Library, "setns");

        /// <summary>errno is read inside the window, before anything else can change it.</summary>
        public static readonly delegate* unmanaged<int*> ErrnoLocation = (delegate* unmanaged<int*>)NativeLibrary.GetExport(Library, "__errno_location");

        public static readonly delegate* unmanaged<int, int, int, int> Socket = (delegate* unmanaged<int, int, int, int>)NativeLibrary.GetExport(Library, "socket");

        /// <summary>open(2) is variadic; the mode is read only with O_CREAT or O_TMPFILE, which a window never passes.</summary>
        public static readonly delegate* unmanaged<byte*, int, int, int> Open = (delegate* unmanaged<byte*, int, int, int>)NativeLibrary.GetExport(Library, "open");
    }
}
