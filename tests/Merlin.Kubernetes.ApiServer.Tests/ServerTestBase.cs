namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>A fresh test server and an official client on it for each test.</summary>
public abstract class ServerTestBase : IAsyncLifetime
{
    protected TestApiServer _server = null!;
    protected k8s.Kubernetes _client = null!;
    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    public virtual async ValueTask InitializeAsync()
    {
        _server = await TestApiServer.StartAsync(Ct);
        _client = new k8s.Kubernetes(_server.ClientConfiguration());
    }

    public virtual async ValueTask DisposeAsync()
    {
        _client.Dispose();
        await _server.DisposeAsync();
    }
}
