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

    public DataplaneState(IReadOnlyDictionary<ServiceKey, ServiceState> services) => Services = services;

    public DataplaneState(IEnumerable<ServiceState> services) => Services = services.ToDictionary(s => s.Key);

    public IReadOnlyDictionary<ServiceKey, ServiceState> Services { get; }

    public int ServerCount => Services.Values.Sum(s => s.Servers.Count);

    public bool SameAs(DataplaneState other) =>
        Services.Count == other.Services.Count &&
        Services.All(kv => other.Services.TryGetValue(kv.Key, out var s) && s.Equals(kv.Value));
}
