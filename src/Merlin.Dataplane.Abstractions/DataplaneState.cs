using System.Collections.Immutable;
using System.Net;
using Merlin.Model;

namespace Merlin.Dataplane.Abstractions;

/// <summary>One virtual service as a dataplane holds it: key, config and real servers (no ids: the kernel has none).</summary>
public sealed record ServiceState(ServiceKey Key, ServiceConfig Config, IReadOnlyDictionary<RealServerKey, RealServerConfig> Servers)
{
    public bool Equals(ServiceState? other) =>
        other is not null && Key.Equals(other.Key) && Config.Equals(other.Config) && SameServers(Servers, other.Servers);

    public override int GetHashCode() => HashCode.Combine(Key, Config, Servers.Count);

    private static bool SameServers(IReadOnlyDictionary<RealServerKey, RealServerConfig> a, IReadOnlyDictionary<RealServerKey, RealServerConfig> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var c) && c.Equals(kv.Value));
}

/// <summary>A whole table of services, keyed by service key. Used for both desired and actual state.</summary>
public sealed class DataplaneState
{
    public static readonly DataplaneState Empty = new(new Dictionary<ServiceKey, ServiceState>());

    // The server count and the VIPs: computed once when first asked, or given by a builder that keeps them
    // incrementally, and shared by states of the same shape, so a pass after one change never walks every service.
    private sealed class Shape
    {
        public int? ServerCount;
        public IReadOnlySet<IPAddress>? Addresses;
    }

    private readonly Shape _shape;

    public DataplaneState(IReadOnlyDictionary<ServiceKey, ServiceState> services) => (Services, _shape) = (services, new Shape());

    public DataplaneState(IEnumerable<ServiceState> services) : this(services.ToDictionary(s => s.Key)) { }

    /// <summary>A state whose server count and VIPs its builder kept as it went (no walk over the services).</summary>
    public DataplaneState(IReadOnlyDictionary<ServiceKey, ServiceState> services, int serverCount, IReadOnlySet<IPAddress> addresses)
        => (Services, _shape) = (services, new Shape { ServerCount = serverCount, Addresses = addresses });

    /// <summary>
    /// A state with the same services and the same servers in each as <paramref name="sameShapeAs"/>; only their
    /// configs (weights) may differ, as when health verdicts are folded in. It shares that state's counts.
    /// </summary>
    public DataplaneState(IReadOnlyDictionary<ServiceKey, ServiceState> services, DataplaneState sameShapeAs)
        => (Services, _shape) = (services, sameShapeAs._shape);

    public IReadOnlyDictionary<ServiceKey, ServiceState> Services { get; }

    public int ServerCount => _shape.ServerCount ??= Services.Values.Sum(s => s.Servers.Count);

    /// <summary>The VIPs of the services (not of firewall-mark services): what an announcer announces.</summary>
    public IReadOnlySet<IPAddress> Addresses => _shape.Addresses ??= Services.Keys.Select(VipOf).OfType<IPAddress>().ToImmutableHashSet();

    /// <summary>A service's VIP; null for a firewall-mark service, which has none of its own.</summary>
    public static IPAddress? VipOf(ServiceKey key) => key is { IsFirewallMark: false, Address: { } address } ? address : null;

    public bool SameAs(DataplaneState other) =>
        Services.Count == other.Services.Count &&
        Services.All(kv => other.Services.TryGetValue(kv.Key, out var s) && s.Equals(kv.Value));
}
