namespace Merlin.Testing;

/// <summary>
/// Which network namespace each thread of this process is in (<c>/proc/self/task/*/ns/net</c>). A thread the
/// runtime starts inherits the namespace of the thread that starts it, so one started while some thread ran
/// managed code inside a namespace stays there, and so would the work it picks up later.
/// </summary>
public static class ThreadNamespaces
{
    /// <summary>The process's own namespace as a link target, <c>net:[inode]</c>.</summary>
    public static string Own => new FileInfo("/proc/self/ns/net").LinkTarget ?? throw new InvalidOperationException("/proc/self/ns/net is not a link");

    /// <summary>Threads not in the process's own namespace now: "tid (comm) in net:[inode]" each.</summary>
    public static IReadOnlyList<string> Elsewhere()
    {
        var own = Own;
        return Where(link => link != own);
    }

    /// <summary>
    /// Threads in namespace <paramref name="ns"/> now. Unlike <see cref="Elsewhere"/> this holds while other
    /// tests work in namespaces of their own.
    /// </summary>
    public static IReadOnlyList<string> In(ScratchNamespace ns)
    {
        var inside = ns.Link;
        return Where(link => link == inside);
    }

    private static List<string> Where(Func<string, bool> matches)
    {
        var away = new List<string>();
        foreach (var task in Directory.GetDirectories("/proc/self/task"))
        {
            string? link;
            try { link = new FileInfo(Path.Combine(task, "ns/net")).LinkTarget; }
            catch (IOException) { continue; } // the thread ended meanwhile
            if (link is null || !matches(link)) continue;
            string name;
            try { name = File.ReadAllText(Path.Combine(task, "comm")).Trim(); }
            catch (IOException) { name = "?"; }
            away.Add($"{Path.GetFileName(task)} ({name}) in {link}");
        }
        return away;
    }
}

/// <summary>
/// Catches managed code running on a thread while that thread is inside namespace <c>ns</c>: the runtime runs
/// a first-chance exception handler on the throwing thread, so any exception raised in there is seen with the
/// thread's namespace at that moment. A window that makes only native calls inside never raises one there.
/// </summary>
public sealed class ManagedCodeInside : IDisposable
{
    [ThreadStatic] private static bool t_inHandler;
    private readonly string _inside;
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _seen = new();

    public ManagedCodeInside(ScratchNamespace ns)
    {
        _inside = ns.Link;
        AppDomain.CurrentDomain.FirstChanceException += OnException;
    }

    /// <summary>What was raised inside: "type: message on thread N" each.</summary>
    public IReadOnlyList<string> Seen => [.. _seen];

    private void OnException(object? sender, System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs e)
    {
        if (t_inHandler) return; // what the handler itself raises
        t_inHandler = true;
        try
        {
            if (new FileInfo("/proc/thread-self/ns/net").LinkTarget == _inside)
                _seen.Enqueue($"{e.Exception.GetType().Name}: {e.Exception.Message} on thread {Environment.CurrentManagedThreadId} ({Thread.CurrentThread.Name})");
        }
        catch (IOException)
        {
            // Not readable: nothing to record.
        }
        finally
        {
            t_inHandler = false;
        }
    }

    public void Dispose() => AppDomain.CurrentDomain.FirstChanceException -= OnException;
}
