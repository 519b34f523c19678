using Merlin.Model;
using Merlin.Store;

namespace Merlin.Reconciler;

/// <summary>A record in the store that cannot be programmed, and why. Reported, never fatal.</summary>
public sealed record RejectedRecord(string Key, string Reason);

/// <summary>A real server's health check, as the store holds it, with where it belongs.</summary>
public sealed record HealthTarget(ServiceKey Service, RealServerKey Server, HealthCheck Check);

/// <summary>Turns a store snapshot into the state a dataplane should hold.</summary>
public static class DesiredState
{
    public static (DataplaneState State, IReadOnlyList<RejectedRecord> Rejected) From(StoreSnapshot snapshot)
    {
        var (state, rejected, _) = Build(snapshot);
        return (state, rejected);
    }

    /// <summary>The desired state, the records that cannot be programmed, and the health checks of the servers in it.</summary>
    /// <param name="withTables">Give md-table services their stored table (<see cref="ServiceConfig.Table"/>): only for a dataplane that programs them.</param>
    public static (DataplaneState State, IReadOnlyList<RejectedRecord> Rejected, IReadOnlyList<HealthTarget> Checks) Build(StoreSnapshot snapshot, bool withTables = false)
    {
        var services = new Dictionary<ServiceKey, ServiceState>(snapshot.Items.Count);
        var rejected = new List<RejectedRecord>();
        var checks = new List<HealthTarget>();
        foreach (var item in snapshot.Items)
        {
            var id = item.Service.Id;
            if (DecodeService(item.Service, rejected) is not { } service) continue;
            // Of several services with one key the first in the store's order (by id) is programmed.
            if (services.ContainsKey(service.Key))
            {
                rejected.Add(KeyTaken(id, service.Key));
                continue;
            }
            var config = WithStoredTable(service.Config, item.Table, withTables);
            services[service.Key] = new ServiceState(service.Key, config, DecodeServers(id, service.Key, item.Servers, rejected, checks));
        }
        return (new DataplaneState(services), rejected, checks);
    }

    /// <summary>The rejection of a service whose key a service earlier in the store's order already has.</summary>
    internal static RejectedRecord KeyTaken(string id, ServiceKey key) => new($"services/{id}", $"key {key} is already used by another service");

    /// <summary>
    /// A stored service as the dataplane should have it, or null; what the store's (lenient) decoding set aside, or
    /// why the record cannot be programmed, goes to <paramref name="rejected"/>.
    /// </summary>
    internal static Model.VirtualService? DecodeService(StoredService stored, List<RejectedRecord> rejected)
    {
        if (stored.Problem is { } problem) rejected.Add(new($"services/{stored.Id}", problem));
        return stored.Service;
    }

    /// <summary>An md-table service's configuration with its stored table, when the dataplane programs stored tables.</summary>
    internal static ServiceConfig WithStoredTable(ServiceConfig config, byte[]? table, bool withTables) =>
        withTables && table is not null && Model.Schedulers.UsesStoredTable(config) ? config with { Table = new StoredTable(table) } : config;

    /// <summary>The servers of service <paramref name="id"/> (its key <paramref name="key"/>) as the dataplane should have them.</summary>
    internal static Dictionary<RealServerKey, RealServerConfig> DecodeServers(string id, ServiceKey key, IEnumerable<StoredServer> stored, List<RejectedRecord> rejected, List<HealthTarget> checks)
    {
        var servers = new Dictionary<RealServerKey, RealServerConfig>();
        foreach (var record in stored)
        {
            var where = $"servers/{id}/{record.Endpoint}";
            // Kept programmed when the store's decoding could (a health check stored before today's bounds), said either way.
            if (record.Problem is { } problem) rejected.Add(new(where, problem));
            if (record.Server is not { } server) continue;
            if (!key.IsFirewallMark && Validation.SameFamily(server.Key.Address, key.Family, "key.ip") is { } familyError)
            {
                rejected.Add(new(where, familyError.ToString()));
                continue;
            }
            // A draining server gets weight 0 (new flows go elsewhere, established ones stay) until it is
            // removed; the store keeps its configured weight for an undrain.
            servers[server.Key] = server.DrainDeadline is null ? server.Config : server.Config with { Weight = 0 };
            if (server.HealthCheck.Endpoint is not null) checks.Add(new HealthTarget(key, server.Key, server.HealthCheck));
        }
        return servers;
    }
}
