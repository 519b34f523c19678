using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// Native work inside a named network namespace (<c>/run/netns/NAME</c>, as <c>ip netns add</c> makes
/// them), done by a thread that enters it with setns(2) and leaves it again around native calls only.
/// <para>
/// Why so narrow: a thread the runtime starts inherits the namespace of the thread that started it,
/// and the runtime starts threads from whatever thread needs one — a thread-pool worker when work is
/// queued, the tiered compiler's worker when a method has been called often enough, a GC thread.
/// Such a thread created inside the namespace would keep it alive after it was deleted (measured: the
/// tiered compiler's worker held a deleted namespace's 1 M set elements for 10 s) or, worse, run
/// anybody's work there. So nothing between entering and leaving allocates or calls managed code:
/// function pointers to libc and libnftables only, read into locals before the switch.
/// </para>
/// </summary>
internal static unsafe class NamespaceWindow
{
    public const int NoFailure = 0, EnterFailed = 1, CallFailed = 2, LeaveFailed = 3;

    private static readonly nint Libc = NativeLibrary.Load("libc.so.6");
    internal static readonly delegate* unmanaged<int, int, int> SetNs = (delegate* unmanaged<int, int, int>)NativeLibrary.GetExport(Libc, "setns");
    internal static readonly delegate* unmanaged<int*> ErrnoLocation = (delegate* unmanaged<int*>)NativeLibrary.GetExport(Libc, "__errno_location");

    /// <summary>The namespace's file and this thread's own, for a window; both null without a namespace.</summary>
    public static (SafeHandle? Target, SafeHandle? Own) Handles(string? networkNamespace)
    {
        if (networkNamespace is null) return (null, null);
        var target = File.OpenHandle(Path.Combine("/run/netns", networkNamespace));
        try
        {
            return (target, File.OpenHandle("/proc/thread-self/ns/net"));
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }

    /// <summary>A socket made inside the namespace (null: here), by a thread of its own.</summary>
    public static int Socket(string? networkNamespace, int domain, int type, int protocol)
    {
        if (networkNamespace is null)
        {
            var fd = Native.socket(domain, type, protocol);
            if (fd < 0) throw new IOException($"socket({domain}, {type}, {protocol}) failed: errno {Marshal.GetLastPInvokeError()}");
            return fd;
        }
        var result = -1;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try { result = SocketIn(networkNamespace, domain, type, protocol); }
            catch (Exception e) { error = e; }
        }) { IsBackground = true, Name = "merlin-netns" };
        thread.Start();
        thread.Join();
        if (error is not null) throw error;
        return result;
    }

    private static int SocketIn(string networkNamespace, int domain, int type, int protocol)
    {
        using var own = Merlin.Netlink.NetworkNamespace.OpenOwn();
        var fd = Merlin.Netlink.NetworkNamespace.Socket(networkNamespace, own, domain, type, protocol, out var errno);
        if (fd < 0) throw new IOException($"socket({domain}, {type}, {protocol}) in network namespace {networkNamespace} failed: errno {errno}");
        return fd;
    }

    /// <summary>
    /// Throws for a window that could not enter; a thread that could not leave ends the process: it
    /// would run everything after in the wrong namespace (it cannot happen while our own namespace's
    /// handle is open, which it is).
    /// </summary>
    public static void Check(int failure, int errno, string? networkNamespace)
    {
        if (failure == LeaveFailed) Environment.FailFast($"setns back from network namespace {networkNamespace} failed: errno {errno}");
        if (failure == EnterFailed) throw new IOException($"setns into network namespace {networkNamespace} failed: errno {errno}");
    }
}

/// <summary>Runs work on a new thread of its own (so a long native call blocks no pool thread), without blocking the caller.</summary>
internal static class OwnThread
{
    /// <summary>nft's parser and evaluator recurse; give them what a process's main thread has.</summary>
    private const int StackSize = 8 << 20;

    public static Task<T> RunAsync<T>(Func<T> work, Action? after = null)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                var result = work();
                after?.Invoke();
                after = null;
                done.SetResult(result);
            }
            catch (Exception e)
            {
                after?.Invoke();
                done.SetException(e);
            }
        }, StackSize) { IsBackground = true, Name = "merlin-nft" };
        thread.Start();
        return done.Task;
    }
}
