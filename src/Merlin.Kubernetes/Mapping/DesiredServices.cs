using System.Net;
using System.Net.Sockets;
using Merlin.Model;

namespace Merlin.Kubernetes.Mapping;

/// <summary>How nodes are health-checked: ETP Cluster through <see cref="ClusterCheck"/> (kube-proxy's own /healthz
/// on 10256 by default; null for none), ETP Local through the Service's healthCheckNodePort.</summary>
public sealed record HealthOptions(Uri? ClusterCheck, TimeSpan Period, TimeSpan Timeout, uint Up, uint Down)
{
    public static readonly HealthOptions Default = new(new Uri("http://check.invalid:10256/healthz"), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(1), 2, 2);

    public HealthCheck For(Uri? endpoint) => endpoint is null
        ? HealthCheck.None
        : new HealthCheck { Endpoint = endpoint, Period = Period, Timeout = Timeout, UpThreshold = Up, DownThreshold = Down };
}

/// <summary>One Merlin virtual service and the real servers it should have.</summary>
public sealed record DesiredService(VirtualService Service, IReadOnlyList<RealServer> Servers);

/// <summary>Service + its addresses + nodes + EndpointSlices → the Merlin services that serve it. Pure.</summary>
public static class DesiredServices
{
    /// <summary>The deterministic Merlin id of one port of one Service on one family:
    /// <c>k8s-&lt;namespace&gt;.&lt;name&gt;.&lt;protocol&gt;-&lt;port&gt;</c>, <c>.ipv6</c> appended for IPv6. Kubernetes
    /// names hold no dots, so the namespace and name are read back unambiguously.</summary>
    public static string Id(string @namespace, string name, Protocol protocol, ushort port, AddressFamily family) =>
        $"{Prefix(@namespace, name)}{protocol.ToString().ToLowerInvariant()}-{port}{(family == AddressFamily.InterNetworkV6 ? ".ipv6" : "")}";

    /// <summary>What every id of one Service starts with.</summary>
    public static string Prefix(string @namespace, string name) => $"{Annotations.IdPrefix}{@namespace}.{name}.";

    /// <summary>The Service (<c>namespace/name</c>) an id of ours belongs to, or null for an id that is not ours.</summary>
    public static string? Owner(string id)
    {
        if (!id.StartsWith(Annotations.IdPrefix, StringComparison.Ordinal)) return null;
        var parts = id[Annotations.IdPrefix.Length..].Split('.');
        return parts.Length >= 3 ? $"{parts[0]}/{parts[1]}" : null;
    }

    public static IReadOnlyList<DesiredService> Build(
        ServiceIntent intent,
        IReadOnlyList<IPAddress> addresses,
        IEnumerable<NodeView> nodes,
        IReadOnlyDictionary<(string Node, AddressFamily Family), int> localEndpoints,
        HealthOptions health)
    {
        var usable = nodes.Where(n => n.Unusable is null).OrderBy(n => n.Name, StringComparer.Ordinal).ToList();
        var result = new List<DesiredService>();
        foreach (var vip in addresses)
        {
            foreach (var port in intent.Ports)
            {
                var id = Id(intent.Namespace, intent.Name, port.Protocol, port.Port, vip.AddressFamily);
                var service = new VirtualService(id, ServiceKey.ForAddress(vip, port.Port, port.Protocol),
                    new ServiceConfig { Scheduler = intent.Scheduler, Flags = intent.Flags });
                var check = health.For(intent.LocalTraffic
                    ? new Uri($"http://check.invalid:{intent.HealthCheckNodePort}/healthz")
                    : health.ClusterCheck);
                var servers = new List<RealServer>();
                foreach (var node in usable)
                {
                    if (node.AddressOf(vip.AddressFamily) is not { } ip) continue;
                    var weight = 1;
                    if (intent.LocalTraffic && !localEndpoints.TryGetValue((node.Name, vip.AddressFamily), out weight)) continue;
                    var config = intent.Forwarding == Forwarding.Nat
                        ? new RealServerConfig { Weight = (uint)weight, Forward = ForwardMethod.Masq }
                        : new RealServerConfig { Weight = (uint)weight, Forward = ForwardMethod.Route };
                    var serverPort = intent.Forwarding == Forwarding.Nat ? port.NodePort : port.Port;
                    servers.Add(new RealServer(id, new RealServerKey(ip, serverPort), config, check));
                }
                result.Add(new DesiredService(service, servers));
            }
        }
        return result;
    }
}
