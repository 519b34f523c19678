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

    private static void Enter(SafeFileHandle handle, string name)
    {
        if (Interop.SetNs((int)handle.DangerousGetHandle(), Interop.CloneNewNet) != 0)
            throw new IOException($"setns into network namespace {name} failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
    }
}
