using Merlin.Linux;

namespace Merlin.Daemon;

/// <summary>
/// One daemon per node and state directory: <see cref="ProcessLock"/> on <c>--state-dir/merlin.lock</c>, taken before
/// anything else is opened, bound or written; a second daemon stops with the first one's PID (exit 2).
/// </summary>
public sealed class NodeLock : IDisposable
{
    private readonly ProcessLock _lock;

    private NodeLock(ProcessLock held) => _lock = held;

    public static NodeLock Take(string stateDir)
    {
        try
        {
            return new NodeLock(ProcessLock.Take(stateDir, "merlin"));
        }
        catch (ProcessLockHeldException e)
        {
            throw new OptionsException($"--state-dir: {stateDir} is in use by another merlin" +
                                       $"{(e.HolderPid is { } pid ? $" (PID {pid})" : "")}; one daemon per node and state directory " +
                                       "(give a second daemon its own --state-dir, ports and store)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OptionsException($"--state-dir: cannot take the node lock {Path.Combine(stateDir, "merlin.lock")}: {e.Message}");
        }
    }

    public void Dispose() => _lock.Dispose();
}
