using k8s;
using k8s.Autorest;
using k8s.LeaderElection;
using k8s.LeaderElection.ResourceLock;
using k8s.Models;
using Merlin.Testing;

namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>Leases with optimistic concurrency, and the client's LeaderElector on a LeaseLock.</summary>
public sealed class LeaseTests : ServerTestBase
{
    [Fact]
    public async Task Replacing_a_lease_with_a_stale_resourceVersion_is_a_Conflict()
    {
        var lease = await _client.CreateNamespacedLeaseAsync(new V1Lease
        {
            Metadata = new V1ObjectMeta { Name = "merlin-k8s" },
            Spec = new V1LeaseSpec { HolderIdentity = "a", LeaseDurationSeconds = 15 },
        }, "kube-system", cancellationToken: Ct);
        var stale = KubernetesJson.Deserialize<V1Lease>(KubernetesJson.Serialize(lease));

        lease.Spec.HolderIdentity = "b";
        var taken = await _client.ReplaceNamespacedLeaseAsync(lease, "merlin-k8s", "kube-system", cancellationToken: Ct);
        Assert.Equal("b", taken.Spec.HolderIdentity);

        stale.Spec.HolderIdentity = "c";
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.ReplaceNamespacedLeaseAsync(stale, "merlin-k8s", "kube-system", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, e.Response.StatusCode);
        Assert.Equal("b", (await _client.ReadNamespacedLeaseAsync("merlin-k8s", "kube-system", cancellationToken: Ct)).Spec.HolderIdentity);
    }

    [Fact]
    public async Task Two_electors_one_leader_and_the_other_takes_over_when_it_stops()
    {
        using var clientB = new k8s.Kubernetes(_server.ClientConfiguration());
        LeaderElector Elector(IKubernetes client, string id) => new(new LeaderElectionConfig(new LeaseLock(client, "kube-system", "merlin-k8s", id))
        {
            LeaseDuration = TimeSpan.FromSeconds(2),
            RenewDeadline = TimeSpan.FromSeconds(1),
            RetryPeriod = TimeSpan.FromMilliseconds(200),
        });
        using var a = Elector(_client, "a");
        using var b = Elector(clientB, "b");
        var leading = new System.Collections.Concurrent.ConcurrentDictionary<string, bool>();
        a.OnStartedLeading += () => leading["a"] = true;
        a.OnStoppedLeading += () => leading["a"] = false;
        b.OnStartedLeading += () => leading["b"] = true;
        b.OnStoppedLeading += () => leading["b"] = false;

        using var stopA = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        using var stopB = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var runA = a.RunUntilLeadershipLostAsync(stopA.Token);
        await WaitUntil(() => leading.GetValueOrDefault("a"), TimeSpan.FromSeconds(10));
        var runB = b.RunUntilLeadershipLostAsync(stopB.Token);

        // For several renewals, a keeps the lease and b never leads.
        await Task.Delay(TimeSpan.FromSeconds(3), Ct);
        Assert.True(leading.GetValueOrDefault("a"));
        Assert.False(leading.GetValueOrDefault("b"));
        Assert.Equal("a", (await _client.ReadNamespacedLeaseAsync("merlin-k8s", "kube-system", cancellationToken: Ct)).Spec.HolderIdentity);
        Assert.Contains(_server.Requests, r => r.StartsWith("PUT /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/merlin-k8s", StringComparison.Ordinal));

        await stopA.CancelAsync();
        await Task.WhenAny(runA, Task.Delay(TimeSpan.FromSeconds(5), Ct));
        await WaitUntil(() => leading.GetValueOrDefault("b"), TimeSpan.FromSeconds(15));
        Assert.Equal("b", (await _client.ReadNamespacedLeaseAsync("merlin-k8s", "kube-system", cancellationToken: Ct)).Spec.HolderIdentity);
        await stopB.CancelAsync();
        await Task.WhenAny(runB, Task.Delay(TimeSpan.FromSeconds(5), Ct));
    }

    static Task WaitUntil(Func<bool> condition, TimeSpan limit) => Poll.UntilAsync(condition, "the lease", limit, interval: TimeSpan.FromMilliseconds(50), ct: Ct);
}
