namespace Merlin.Kubernetes.ApiServer;

/// <summary>A <see cref="TestApiServer"/> with the machine's kubectl pointed at it: what a test that applies
/// manifests with kubectl needs. Skips outside CI (fails in CI) when kubectl is not installed.</summary>
public sealed class KubectlCluster : IAsyncDisposable
{
    private KubectlCluster(TestApiServer api, Kubectl kubectl) => (Api, Kubectl) = (api, kubectl);

    public TestApiServer Api { get; }
    public Kubectl Kubectl { get; }

    public static async Task<KubectlCluster> StartAsync(CancellationToken ct)
    {
        Kubectl.Require();
        var api = await TestApiServer.StartAsync(ct);
        return new KubectlCluster(api, new Kubectl(api));
    }

    public async ValueTask DisposeAsync()
    {
        Kubectl.Dispose();
        await Api.DisposeAsync();
    }
}
