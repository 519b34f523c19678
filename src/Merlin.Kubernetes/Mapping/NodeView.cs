using System.Net;
using System.Net.Sockets;
using k8s.Models;

namespace Merlin.Kubernetes.Mapping;

/// <summary>A node as a real server: its InternalIP of each family, and why it may not take new connections (null if
/// it may). A node that may not is drained, not cut, so its open connections finish.</summary>
public sealed record NodeView(string Name, IPAddress? V4, IPAddress? V6, string? Unusable)
{
    public IPAddress? AddressOf(AddressFamily family) => family == AddressFamily.InterNetwork ? V4 : V6;

    public static NodeView From(V1Node node)
    {
        IPAddress? v4 = null, v6 = null;
        foreach (var a in node.Status?.Addresses ?? [])
        {
            if (a.Type != "InternalIP" || !IPAddress.TryParse(a.Address, out var ip)) continue;
            if (ip.AddressFamily == AddressFamily.InterNetwork) v4 ??= ip;
            else if (ip.AddressFamily == AddressFamily.InterNetworkV6) v6 ??= ip;
        }
        return new(node.Metadata.Name, v4, v6, WhyUnusable(node));
    }

    private static string? WhyUnusable(V1Node node)
    {
        if (node.Metadata.DeletionTimestamp is not null) return "being deleted";
        if (node.Metadata.Labels?.ContainsKey(Annotations.ExcludeLabel) == true) return $"labelled {Annotations.ExcludeLabel}";
        if (node.Spec?.Taints?.Any(t => t.Key == Annotations.ToBeDeletedTaint) == true) return $"tainted {Annotations.ToBeDeletedTaint}";
        var ready = node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready");
        if (ready?.Status != "True") return "not Ready";
        return null;
    }
}

/// <summary>Ready endpoints per node and family, from a Service's EndpointSlices: the weights of
/// <c>externalTrafficPolicy: Local</c>.</summary>
public static class LocalEndpoints
{
    public static IReadOnlyDictionary<(string Node, AddressFamily Family), int> Count(IEnumerable<V1EndpointSlice> slices)
    {
        var seen = new HashSet<(string Node, AddressFamily Family, string Address)>();
        foreach (var slice in slices)
        {
            var family = slice.AddressType switch
            {
                "IPv4" => AddressFamily.InterNetwork,
                "IPv6" => AddressFamily.InterNetworkV6,
                _ => AddressFamily.Unknown, // FQDN slices hold no pods on nodes
            };
            if (family == AddressFamily.Unknown) continue;
            foreach (var e in slice.Endpoints ?? [])
            {
                // An unset ready condition means ready (the API's own rule); terminating endpoints are not ready.
                if (e.Conditions?.Ready == false || string.IsNullOrEmpty(e.NodeName) || e.Addresses is not { Count: > 0 }) continue;
                seen.Add((e.NodeName, family, e.Addresses[0]));
            }
        }
        return seen.GroupBy(s => (s.Node, s.Family)).ToDictionary(g => g.Key, g => g.Count());
    }
}
