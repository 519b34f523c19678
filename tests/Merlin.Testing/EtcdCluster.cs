namespace Merlin.Testing;

/// <summary>
/// A real etcd cluster of several members (Debian's <c>etcd</c> binary), each on 127.0.0.1 with its own free client
/// and peer ports and temporary data dir. A member can be stopped (SIGKILL by its PID) and started again on the same
/// ports and data, which is how tests lose a member and bring it back. <see cref="Dispose"/> stops every member and
/// deletes the data dirs. Call <see cref="Requires.Etcd"/> before <see cref="Launch"/> in a test.
/// </summary>
public sealed class EtcdCluster : IDisposable
{
    private EtcdCluster(IReadOnlyList<EtcdServer> members) => Members = members;

    public IReadOnlyList<EtcdServer> Members { get; }

    /// <summary>Every member's client URL, as a daemon's <c>--store-endpoints</c> takes them.</summary>
    public IReadOnlyList<string> Endpoints => Members.Select(m => m.Endpoint).ToArray();

    /// <summary>Starts a fresh cluster of <paramref name="size"/> members and waits until each answers healthy.</summary>
    public static EtcdCluster Launch(int size = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        Exception? last = null;
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var ports = Enumerable.Range(0, size).Select(_ => (Client: LocalPorts.Free(), Peer: LocalPorts.Free())).ToArray();
            if (ports.SelectMany(p => new[] { p.Client, p.Peer }).Distinct().Count() != 2 * size) continue;
            var initial = string.Join(',', ports.Select((p, i) => $"m{i}=http://127.0.0.1:{p.Peer}"));
            var cluster = new EtcdCluster(ports.Select((p, i) => EtcdServer.Member($"m{i}", p.Client, p.Peer, initial)).ToArray());
            try
            {
                foreach (var member in cluster.Members) member.StartProcess();
                foreach (var member in cluster.Members) member.WaitUntilHealthy();
                return cluster;
            }
            catch (Exception e)
            {
                // Most likely a port taken between choosing and binding it: try other ports.
                last = e;
                cluster.Dispose();
            }
        }
        throw new InvalidOperationException($"an etcd cluster of {size} did not start after 3 attempts", last);
    }

    /// <summary>Kills member <paramref name="index"/> by its PID (SIGKILL) and waits for it to exit.</summary>
    public void Stop(int index) => Members[index].Stop();

    /// <summary>Starts member <paramref name="index"/> again on its ports and data, and waits until it is healthy (caught up with the leader).</summary>
    public void Start(int index)
    {
        var member = Members[index];
        member.StartProcess();
        member.WaitUntilHealthy();
    }

    /// <summary>What every member printed lately (for failure messages).</summary>
    public string Log => string.Join("\n", Members.Select(m => $"--- etcd {m.Name} ({m.Endpoint}) ---\n{m.Log}"));

    public void Dispose()
    {
        foreach (var member in Members) member.Dispose();
    }
}
