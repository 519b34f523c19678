namespace Merlin.Daemon;

/// <summary>
/// One daemon per node and state directory: an exclusive lock on <c>--state-dir/merlin.lock</c> (flock, so the
/// kernel releases it when the process dies, even by SIGKILL) held for the daemon's life, and its PID in
/// <c>merlin.pid</c> beside it, so that a second daemon can say which one holds it. Taken before anything else
/// is opened, bound or written; a second daemon stops with the first one's PID (exit 2).
/// </summary>
public sealed class NodeLock : IDisposable
{
    private readonly FileStream _lock;

    private NodeLock(FileStream held) => _lock = held;

    public static NodeLock Take(string stateDir)
    {
        var lockPath = Path.Combine(stateDir, "merlin.lock");
        var pidPath = Path.Combine(stateDir, "merlin.pid");
        try
        {
            Directory.CreateDirectory(stateDir);
            // FileShare.None is an exclusive, non-blocking flock on Linux.
            var held = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            File.WriteAllText(pidPath, $"{Environment.ProcessId}\n");
            return new NodeLock(held);
        }
        catch (IOException) when (File.Exists(lockPath))
        {
            var pid = File.Exists(pidPath) ? File.ReadAllText(pidPath).Trim() : "";
            throw new OptionsException($"--state-dir: {stateDir} is in use by another merlin" +
                                       $"{(pid.Length is > 0 and < 16 ? $" (PID {pid})" : "")}; one daemon per node and state directory " +
                                       "(give a second daemon its own --state-dir, ports and store)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OptionsException($"--state-dir: cannot take the node lock {lockPath}: {e.Message}");
        }
    }

    public void Dispose() => _lock.Dispose(); // merlin.pid stays: it names the last holder, and the lock says whether it still runs
}
