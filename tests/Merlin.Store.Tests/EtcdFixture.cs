using Merlin.Testing;

namespace Merlin.Store.Tests;

/// <summary>One real etcd per test class, started on first use (so a missing etcd skips instead of failing the fixture).</summary>
public sealed class EtcdFixture : IDisposable
{
    private readonly Lazy<EtcdServer> _server = new(EtcdServer.Launch, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The running server; skips the test (outside CI) if etcd is not installed.</summary>
    public EtcdServer Server
    {
        get
        {
            Requires.Etcd();
            return _server.Value;
        }
    }

    public void Dispose()
    {
        if (_server.IsValueCreated) _server.Value.Dispose();
    }
}
