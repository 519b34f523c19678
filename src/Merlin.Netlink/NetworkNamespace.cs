using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Merlin.Netlink;

/// <summary>
/// Runs a short piece of code inside a named network namespace (<c>/run/netns/&lt;name&gt;</c>, as
/// <c>ip netns add</c> makes them). A socket keeps the namespace it was created in, so this is only
/// needed to open one: the work happens on a dedicated thread that enters the namespace with
/// setns(2), so no pool thread ever runs in the wrong namespace.
/// </summary>
public static class NetworkNamespace
{
    /// <summary>Runs <paramref name="action"/> inside namespace <paramref name="name"/>; null runs it here.</summary>
    public static T Run<T>(string? name, Func<T> action)
    {
        if (name is null) return action();
        T result = default!;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                using SafeFileHandle own = File.OpenHandle("/proc/thread-self/ns/net");
                using SafeFileHandle target = File.OpenHandle(Path.Combine("/run/netns", name));
                Enter(target, name);
                try { result = action(); }
                finally { Enter(own, "(own)"); }
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { IsBackground = true, Name = "merlin-netns" };
        thread.Start();
        thread.Join();
        if (error is not null) throw error;
        return result;
    }

    /// <summary>
    /// Makes a socket inside namespace <paramref name="name"/> on the calling thread, for a thread that opens
    /// sockets often and must not wait for a thread per socket (a prober's event loop). The thread is in the
    /// namespace only around the <c>socket</c> call itself — setns, socket, setns back, through function
    /// pointers, nothing managed in between — because a thread the runtime starts inherits the namespace of
    /// the thread that starts it, and a managed call may start one (the tiered compiler's worker, a pool
    /// thread). <paramref name="own"/> is this thread's own namespace (<see cref="OpenOwn"/>), kept open by
    /// the caller. Returns the fd, or -1 with <paramref name="errno"/> set when socket(2) fails; throws when
    /// the namespace cannot be opened or entered; ends the process if the thread cannot come back.
    /// </summary>
    public static unsafe int Socket(string name, SafeFileHandle own, int domain, int type, int protocol, out int errno)
    {
        using var target = File.OpenHandle(Path.Combine("/run/netns", name)); // anew each time: the name may now be another namespace
        var fd = SocketWindow((int)target.DangerousGetHandle(), (int)own.DangerousGetHandle(), domain, type, protocol, out var failure, out errno);
        if (failure == LeaveFailed) Environment.FailFast($"setns back from network namespace {name} failed: errno {errno}");
        if (failure == EnterFailed) throw new IOException($"setns into network namespace {name} failed: errno {errno}");
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
        return Interop.Stat(Path.Combine("/run/netns", name), buffer) == 0 ? *(ulong*)(buffer + 8) : 0;
    }

    /// <summary>The calling thread's own network namespace, to come back to after <see cref="Socket"/>.</summary>
    public static SafeFileHandle OpenOwn() => File.OpenHandle("/proc/thread-self/ns/net");

    private const int EnterFailed = 1, LeaveFailed = 2;
    private static readonly nint Libc = NativeLibrary.Load("libc.so.6");
    private static readonly unsafe delegate* unmanaged<int, int, int> SetNsCall = (delegate* unmanaged<int, int, int>)NativeLibrary.GetExport(Libc, "setns");
    private static readonly unsafe delegate* unmanaged<int, int, int, int> SocketCall = (delegate* unmanaged<int, int, int, int>)NativeLibrary.GetExport(Libc, "socket");
    private static readonly unsafe delegate* unmanaged<int*> ErrnoLocation = (delegate* unmanaged<int*>)NativeLibrary.GetExport(Libc, "__errno_location");

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe int SocketWindow(int target, int own, int domain, int type, int protocol, out int failure, out int errno)
    {
        var setns = SetNsCall;
        var socket = SocketCall;
        var errnoLocation = ErrnoLocation;
        failure = 0;
        errno = 0;
        if (setns(target, Interop.CloneNewNet) != 0)
        {
            failure = EnterFailed;
            errno = *errnoLocation();
            return -1;
        }
        // ---- inside: native calls only ----
        var fd = socket(domain, type, protocol);
        if (fd < 0) errno = *errnoLocation();
        if (setns(own, Interop.CloneNewNet) != 0)
        {
            failure = LeaveFailed;
            errno = *errnoLocation();
        }
        return fd;
    }

    private static void Enter(SafeFileHandle handle, string name)
    {
        if (Interop.SetNs((int)handle.DangerousGetHandle(), Interop.CloneNewNet) != 0)
            throw new IOException($"setns into network namespace {name} failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
    }
}
