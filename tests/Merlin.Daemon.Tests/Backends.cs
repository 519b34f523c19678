using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>Starts a daemon on the named store backend: a fresh SQLite file or a fresh prefix in the class's etcd.</summary>
public abstract class BackendTestBase(EtcdFixture etcd) : IClassFixture<EtcdFixture>, IDisposable
{
    private readonly TempDir _dir = new("daemon");
    private readonly string _prefix = $"/merlin-test-{Guid.NewGuid():N}";

    public static TheoryData<string> Backends => new("sqlite", "etcd3");

    protected EtcdFixture Etcd => etcd;

    protected string Prefix => _prefix;

    protected Task<RunningDaemon> StartDaemonAsync(string backend) => RunningDaemon.StartAsync(o => backend == "sqlite"
        ? o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") }
        : o with { StoreBackend = "etcd3", StoreEndpoints = [etcd.Server.Endpoint], StorePrefix = _prefix, StoreTimeout = TimeSpan.FromSeconds(2) });

    public void Dispose() => _dir.Dispose();
}
