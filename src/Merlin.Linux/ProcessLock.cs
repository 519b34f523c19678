namespace Merlin.Linux;

/// <summary>
/// One process of a kind per directory: an exclusive flock on <c>&lt;dir&gt;/&lt;name&gt;.lock</c> (the kernel releases it
/// when the process dies, even by SIGKILL) held for the process's life, and its PID in <c>&lt;name&gt;.pid</c> beside it,
/// so that a second one can say which process holds it. The daemon and the agent each take theirs before they open,
/// bind or change anything.
/// </summary>
public sealed class ProcessLock : IDisposable
{
    private readonly FileStream _lock;

    private ProcessLock(FileStream held) => _lock = held;

    /// <summary>Takes the lock, creating <paramref name="dir"/> if needed. Throws <see cref="ProcessLockHeldException"/>
    /// when another process holds it, and IOException or UnauthorizedAccessException when the directory cannot be used.</summary>
    public static ProcessLock Take(string dir, string name)
    {
        var lockPath = Path.Combine(dir, name + ".lock");
        var pidPath = Path.Combine(dir, name + ".pid");
        Directory.CreateDirectory(dir);
        FileStream held;
        try
        {
            // FileShare.None is an exclusive, non-blocking flock on Linux.
            held = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException) when (File.Exists(lockPath))
        {
            var pid = File.Exists(pidPath) ? File.ReadAllText(pidPath).Trim() : "";
            throw new ProcessLockHeldException(dir, int.TryParse(pid, out var p) ? p : null);
        }
        try
        {
            File.WriteAllText(pidPath, $"{Environment.ProcessId}\n");
        }
        catch
        {
            held.Dispose();
            throw;
        }
        return new ProcessLock(held);
    }

    public void Dispose() => _lock.Dispose(); // the .pid file stays: it names the last holder, and the lock says whether it still runs
}

/// <summary>Another process holds the lock; <see cref="HolderPid"/> is its PID when it wrote one.</summary>
public sealed class ProcessLockHeldException(string dir, int? holderPid)
    : IOException($"{dir} is in use by another process{(holderPid is { } p ? $" (PID {p})" : "")}")
{
    public int? HolderPid { get; } = holderPid;
}
