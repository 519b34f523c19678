namespace Merlin.Daemon;

/// <summary>
/// Whether an operator drained this node (<c>meradm node drain</c>): its announcer then withdraws every VIP.
/// Kept as a file in the state directory, so a drained node that restarts (an upgrade, a reboot) stays out
/// of the routers' paths until it is undrained.
/// </summary>
public sealed class NodeDrain
{
    private readonly string _path;
    private readonly Lock _lock = new();
    private bool _drained;

    public NodeDrain(string stateDir)
    {
        _path = Path.Combine(stateDir, "node-drained");
        _drained = File.Exists(_path);
    }

    public bool Drained { get { lock (_lock) return _drained; } }

    public void Set(bool drained)
    {
        lock (_lock)
        {
            if (drained == _drained) return;
            if (drained)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
                File.WriteAllText(_path, $"drained at {DateTimeOffset.UtcNow:O} by meradm node drain; meradm node undrain ends it\n");
            }
            else
            {
                File.Delete(_path);
            }
            _drained = drained;
        }
    }
}
