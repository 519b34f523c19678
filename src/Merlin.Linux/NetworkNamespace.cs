using System.Diagnostics.CodeAnalysis;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Merlin.Linux;

/// <summary>
/// File descriptors made inside a named network namespace (<c>/run/netns/&lt;name&gt;</c>, as <c>ip netns
/// add</c> makes them): a socket keeps the namespace it was created in for its whole life, and a file under
/// <c>/proc/sys/net</c> or <c>/proc/thread-self/net</c> answers for the namespace it was opened in. So only the
/// call that makes the descriptor needs to be inside; everything done with it afterwards (bind, connect, TLS,
/// reads and writes) happens here, on any thread.
/// <para>
/// The calling thread enters the namespace with setns(2) around that one native call — setns, socket or open,
/// setns back, through function pointers read into locals first, nothing managed in between — because a thread
/// the runtime starts inherits the namespace of the thread that starts it, and the runtime starts threads from
/// whatever thread needs one: a thread-pool worker when work is queued, the tiered compiler's worker when a
/// method has been called often enough, a GC thread. Such a thread created inside would keep a deleted
/// namespace alive (measured: the tiered compiler's worker held a deleted namespace's 1 M nftables set
/// elements for 10 s) or, worse, run anybody's work there. A window that enters but cannot come back ends the
/// process: the thread would run everything after it in the wrong namespace.
/// </para>
/// <para>
/// A window written elsewhere around other native calls (libnftables) uses <see cref="SetNsFunction"/>,
/// <see cref="ErrnoFunction"/>, <see cref="OpenWindow"/> and <see cref="Check"/>, under the same rule.
/// </para>
/// </summary>
public static class NetworkNamespace
{
    /// <summary>
    /// A socket made inside namespace <paramref name="name"/> (null: this one), for System.Net: connect, bind
    /// or listen on it here. Throws <see cref="SocketException"/> when socket(2) fails, <see cref="IOException"/>
    /// when the namespace cannot be opened or entered.
    /// </summary>
    public static Socket CreateSocket(string? name, AddressFamily family, SocketType type, ProtocolType protocol)
    {
        if (name is null) return new Socket(family, type, protocol);
        if (!TryCreateSocket(name, Domain(family), (int)type | SockCloexec, (int)protocol, out var handle, out var errno))
            throw new SocketException((int)SocketErrorOf(errno), $"socket({family}, {type}, {protocol}){In(name)}: {Marshal.GetPInvokeErrorMessage(errno)}");
        try
        {
            return new Socket(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A socket of any family made inside namespace <paramref name="name"/> (null: this one), e.g. AF_NETLINK,
    /// which System.Net.Sockets.Socket cannot take. False with <paramref name="errno"/> when socket(2) fails;
    /// throws <see cref="IOException"/> when the namespace cannot be opened or entered.
    /// </summary>
    public static bool TryCreateSocket(string? name, int domain, int type, int protocol, [NotNullWhen(true)] out SafeSocketHandle? socket, out int errno)
    {
        int fd;
        if (name is null)
        {
            fd = Libc.Socket(domain, type, protocol);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        }
        else
        {
            using var window = OpenWindow(name);
            fd = Socket(name, window.Own, window.Target, domain, type, protocol, out errno);
        }
        socket = fd < 0 ? null : new SafeSocketHandle(fd, ownsHandle: true);
        return socket is not null;
    }

    /// <summary>
    /// Opens <paramref name="path"/> (<see cref="FileMode.Open"/> or <see cref="FileMode.Truncate"/>) inside
    /// namespace <paramref name="name"/> (null: here), close-on-exec: for
    /// per-namespace files such as <c>/proc/sys/net/…</c>, which read and write that namespace's setting through
    /// the descriptor from any thread afterwards. Throws <see cref="FileNotFoundException"/>,
    /// <see cref="UnauthorizedAccessException"/> or <see cref="IOException"/> as File.OpenHandle does.
    /// </summary>
    public static unsafe SafeFileHandle OpenFile(string? name, string path, FileMode mode, FileAccess access)
    {
        if (mode is not (FileMode.Open or FileMode.Truncate)) throw new ArgumentOutOfRangeException(nameof(mode), mode, "a file in a namespace is opened, or truncated, never created");
        if (name is null) return File.OpenHandle(path, mode, access);
        var flags = OCloexec | (mode == FileMode.Truncate ? OTrunc : 0) | access switch { FileAccess.Read => ORdonly, FileAccess.Write => OWronly, _ => ORdwr };
        var bytes = new byte[Encoding.UTF8.GetByteCount(path) + 1];
        Encoding.UTF8.GetBytes(path, bytes);
        int fd, errno;
        using (var window = OpenWindow(name))
        fixed (byte* p = bytes)
        {
            fd = NativeWindow((int)window.Target.DangerousGetHandle(), (int)window.Own.DangerousGetHandle(), OpOpen, 0, flags, 0, p, out var failure, out errno);
            Check(failure, errno, name);
        }
        if (fd >= 0) return new SafeFileHandle(fd, ownsHandle: true);
        var message = $"{path}{In(name)}: {Marshal.GetPInvokeErrorMessage(errno)}";
        throw errno switch
        {
            Errno.ENOENT or ENotDir => new FileNotFoundException(message, path),
            EAcces or EPerm or ERofs => new UnauthorizedAccessException(message),
            _ => new IOException(message, errno),
        };
    }

    /// <summary>
    /// The raw window, for a thread that opens sockets often and handles errors itself (a prober's event loop):
    /// a socket made inside namespace <paramref name="name"/>, the namespace opened anew (the name may now stand
    /// for another one); <paramref name="own"/> is this thread's own namespace (<see cref="OpenOwn"/>), kept open
    /// by the caller. Returns the fd, or -1 with <paramref name="errno"/> set when socket(2) fails; throws when
    /// the namespace cannot be opened or entered.
    /// </summary>
    public static int Socket(string name, SafeFileHandle own, int domain, int type, int protocol, out int errno)
    {
        using var target = File.OpenHandle(Path.Combine("/run/netns", name));
        return Socket(name, own, target, domain, type, protocol, out errno);
    }

    private static unsafe int Socket(string name, SafeHandle own, SafeHandle target, int domain, int type, int protocol, out int errno)
    {
        var fd = NativeWindow((int)target.DangerousGetHandle(), (int)own.DangerousGetHandle(), OpSocket, domain, type, protocol, null, out var failure, out errno);
        Check(failure, errno, name);
        return fd;
    }

    /// <summary>
    /// Which namespace <paramref name="name"/> stands for now: its inode (nsfs), 0 for null (this one) or a
    /// name that is not there. Something kept open in a namespace (a socket, a libnftables context) is
    /// compared with it before use: a namespace deleted and made again under the same name is another one.
    /// </summary>
    public static unsafe ulong Identity(string? name)
    {
        if (name is null) return 0;
        var buffer = stackalloc byte[256];
        return Libc.Stat(Path.Combine("/run/netns", name), buffer) == 0 ? *(ulong*)(buffer + 8) : 0;
    }

    /// <summary>The calling thread's own network namespace, to come back to after a window.</summary>
    public static SafeFileHandle OpenOwn() => File.OpenHandle("/proc/thread-self/ns/net");

    /// <summary>The namespace to enter and the calling thread's own to come back to, open for one window.</summary>
    public sealed class Window : IDisposable
    {
        internal Window(SafeFileHandle target, SafeFileHandle own) => (Target, Own) = (target, own);

        public SafeFileHandle Target { get; }
        public SafeFileHandle Own { get; }

        public void Dispose()
        {
            Target.Dispose();
            Own.Dispose();
        }
    }

    /// <summary>Opens namespace <paramref name="name"/> and the calling thread's own, for a window on this thread.</summary>
    public static Window OpenWindow(string name)
    {
        var target = File.OpenHandle(Path.Combine("/run/netns", name));
        try
        {
            return new Window(target, OpenOwn());
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }

    /// <summary>How a window went, for <see cref="Check"/>.</summary>
    public const int NoFailure = 0, EnterFailed = 1, LeaveFailed = 2;

    /// <summary>setns(2)'s nstype for a network namespace.</summary>
    public const int CloneNewNet = Libc.CloneNewNet;

    /// <summary>libc's setns, for a window written elsewhere: read it into a local before entering.</summary>
    public static unsafe delegate* unmanaged<int, int, int> SetNsFunction => Libc.Window.SetNs;

    /// <summary>libc's __errno_location, likewise: errno is read inside the window, before anything else can change it.</summary>
    public static unsafe delegate* unmanaged<int*> ErrnoFunction => Libc.Window.ErrnoLocation;

    /// <summary>
    /// After a window: throws when it could not enter; ends the process when it could not come back (the thread
    /// would run everything after in the wrong namespace; it cannot happen while the own namespace's handle is open).
    /// </summary>
    public static void Check(int failure, int errno, string? name)
    {
        if (failure == LeaveFailed) Environment.FailFast($"setns back from network namespace {name} failed: errno {errno}");
        if (failure == EnterFailed) throw new IOException($"setns into network namespace {name} failed: errno {errno}");
    }

    private const int OpSocket = 0, OpOpen = 1;
    private const int SockCloexec = 0x80000, ORdonly = 0, OWronly = 1, ORdwr = 2, OTrunc = 0x200, OCloexec = 0x80000;
    private const int EPerm = 1, EAcces = 13, ENotDir = 20, ERofs = 30;

    private static string In(string? name) => name is null ? "" : $" in network namespace {name}";

    /// <summary>The few errors socket(2) gives, as System.Net names them (its own mapping is internal).</summary>
    private static SocketError SocketErrorOf(int errno) => errno switch
    {
        EAcces or EPerm => SocketError.AccessDenied,
        23 or 24 => SocketError.TooManyOpenSockets,       // ENFILE, EMFILE
        97 => SocketError.AddressFamilyNotSupported,      // EAFNOSUPPORT
        93 => SocketError.ProtocolNotSupported,           // EPROTONOSUPPORT
        105 or 12 => SocketError.NoBufferSpaceAvailable,  // ENOBUFS, ENOMEM
        _ => SocketError.SocketError,
    };

    private static int Domain(AddressFamily family) => family switch
    {
        AddressFamily.InterNetwork => 2,
        AddressFamily.InterNetworkV6 => 10,
        AddressFamily.Unix => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(family), family, "a socket in a namespace is AF_INET, AF_INET6 or AF_UNIX"),
    };

    /// <summary>
    /// setns in, one call (socket(a, b, c) or open(path, b, c)), setns back. Fully optimised at once and never
    /// inlined, so no tiering stub or managed helper runs while the thread is inside.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe int NativeWindow(int target, int own, int op, int a, int b, int c, byte* path, out int failure, out int errno)
    {
        var setns = Libc.Window.SetNs;
        var socket = Libc.Window.Socket;
        var open = Libc.Window.Open;
        var errnoLocation = Libc.Window.ErrnoLocation;
        failure = NoFailure;
        errno = 0;
        if (setns(target, CloneNewNet) != 0)
        {
            failure = EnterFailed;
            errno = *errnoLocation();
            return -1;
        }
        // ---- inside: native calls only ----
        var fd = op == OpSocket ? socket(a, b, c) : open(path, b, c);
        if (fd < 0) errno = *errnoLocation();
        if (setns(own, CloneNewNet) != 0)
        {
            failure = LeaveFailed;
            errno = *errnoLocation();
        }
        return fd;
    }
}
