using k8s;
using k8s.Models;

namespace Merlin.Kubernetes.Kube;

/// <summary>List and watch of each kind the controller follows, cluster-wide, through the official client.</summary>
public static class Sources
{
    // A watch is ended by the server after this long and reopened from the last resourceVersion, so a silently dead
    // connection is noticed within it.
    private const int WatchSeconds = 300;

    public static ResourceSource<V1Service> Services(IKubernetes k) => new("services",
        async ct => await k.CoreV1.ListServiceForAllNamespacesAsync(cancellationToken: ct) is var l ? (l.Items, l.Metadata.ResourceVersion) : default,
        (rv, onError, ct) => k.CoreV1.WatchListServiceForAllNamespacesAsync(resourceVersion: rv, allowWatchBookmarks: true, timeoutSeconds: WatchSeconds, onError: onError, cancellationToken: ct));

    public static ResourceSource<V1Node> Nodes(IKubernetes k) => new("nodes",
        async ct => await k.CoreV1.ListNodeAsync(cancellationToken: ct) is var l ? (l.Items, l.Metadata.ResourceVersion) : default,
        (rv, onError, ct) => k.CoreV1.WatchListNodeAsync(resourceVersion: rv, allowWatchBookmarks: true, timeoutSeconds: WatchSeconds, onError: onError, cancellationToken: ct),
        TrimNode);

    // A node's status lists every image it has pulled and every volume attached (tens of KB on a busy node); the
    // controller reads only its addresses, conditions, labels and taints.
    private static void TrimNode(V1Node node)
    {
        if (node.Status is not { } status) return;
        status.Images = null;
        status.VolumesAttached = null;
        status.VolumesInUse = null;
    }

    public static ResourceSource<V1EndpointSlice> EndpointSlices(IKubernetes k) => new("endpointslices",
        async ct => await k.DiscoveryV1.ListEndpointSliceForAllNamespacesAsync(cancellationToken: ct) is var l ? (l.Items, l.Metadata.ResourceVersion) : default,
        (rv, onError, ct) => k.DiscoveryV1.WatchListEndpointSliceForAllNamespacesAsync(resourceVersion: rv, allowWatchBookmarks: true, timeoutSeconds: WatchSeconds, onError: onError, cancellationToken: ct));

    // The typed watch of custom objects exists only in the older form; its replacement yields untyped objects.
#pragma warning disable CS0618
    public static ResourceSource<V1IPPool> IpPools(IKubernetes k) => new("ippools",
        async ct => await k.CustomObjects.ListClusterCustomObjectAsync<V1IPPoolList>(V1IPPool.Group, V1IPPool.Version, V1IPPool.Plural, cancellationToken: ct) is var l ? (l.Items, l.Metadata.ResourceVersion) : default,
        (rv, onError, ct) => k.CustomObjects.ListClusterCustomObjectWithHttpMessagesAsync<V1IPPoolList>(V1IPPool.Group, V1IPPool.Version, V1IPPool.Plural, watch: true, resourceVersion: rv, allowWatchBookmarks: true, timeoutSeconds: WatchSeconds, cancellationToken: ct)
            .WatchAsync<V1IPPool, V1IPPoolList>(onError, ct));
#pragma warning restore CS0618
}
