using System.Runtime.CompilerServices;
using k8s;
using k8s.Models;
using Merlin.Kubernetes.Kube;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Kubernetes.Tests.Kube;

/// <summary>The informer's copy: what it keeps of each object, and the changes it tells, over a scripted list and watch.</summary>
public sealed class ResourceCacheTests
{
    private static V1Node Node(string name, string rv) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name, ResourceVersion = rv, Labels = new Dictionary<string, string> { ["zone"] = "a" },
            ManagedFields = [new V1ManagedFieldsEntry { Manager = "kubelet", Operation = "Update" }],
        },
        Status = new V1NodeStatus
        {
            Addresses = [new V1NodeAddress { Type = "InternalIP", Address = "198.18.5.1" }],
            Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
            Images = [new V1ContainerImage { Names = ["registry.example/app@sha256:00"], SizeBytes = 1 << 20 }],
            VolumesInUse = ["kubernetes.io/csi/vol-1"],
        },
    };

    [Fact]
    public async Task KeptObjects_LoseManagedFieldsAndWhatTheSourceTrims_AndKeepWhatTheControllerReads()
    {
        var watched = Node("n2", "11");
        var source = new ResourceSource<V1Node>("nodes",
            _ => Task.FromResult<(IList<V1Node>, string)>(([Node("n1", "10")], "10")),
            (_, _, ct) => Events(ct, (WatchEventType.Added, watched)),
            n => n.Status!.Images = null);
        var cache = new ResourceCache<V1Node>(source, TimeProvider.System, NullLogger.Instance);
        var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cache.Changed += (_, n) => { if (n?.Metadata.Name == "n2") changed.TrySetResult(); };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var run = cache.RunAsync(cts.Token);
        await changed.Task.WaitAsync(cts.Token);

        foreach (var name in new[] { "n1", "n2" })
        {
            var node = cache.Get(name)!;
            Assert.Null(node.Metadata.ManagedFields);
            Assert.Null(node.Status!.Images);
            Assert.Equal(["kubernetes.io/csi/vol-1"], node.Status.VolumesInUse); // not trimmed by this source
            Assert.Equal("a", node.Metadata.Labels["zone"]);
            Assert.Equal("198.18.5.1", Assert.Single(node.Status.Addresses).Address);
            Assert.Equal("Ready", Assert.Single(node.Status.Conditions).Type);
        }
        await cts.CancelAsync();
        await run;
    }

    private static async IAsyncEnumerable<(WatchEventType, V1Node)> Events(
        [EnumeratorCancellation] CancellationToken ct, params (WatchEventType, V1Node)[] events)
    {
        foreach (var e in events) yield return e;
        await Task.Delay(Timeout.Infinite, ct); // a watch that stays open until the test ends
    }
}
