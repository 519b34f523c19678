using Merlin.Model;
using Merlin.Store;
using Merlin.Wire;

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

    /// <summary>A stored service as the dataplane should have it, or null (with the reason in <paramref name="rejected"/>).</summary>
    internal static Model.VirtualService? DecodeService(Wire.VirtualService wire, List<RejectedRecord> rejected)
    {
        var id = wire.Id;
        var error = WireMapper.TryToModel(wire, out var service);
        if (error?.Field == "config.flags")
        {
            // The Go merlin passed any flag to the kernel, which ignores flags a scheduler does not use.
            // Such a record must keep working after an upgrade: drop the flag, say so, program the rest.
            var lenient = wire.Clone();
            var scheduler = lenient.Config.Scheduler.Trim();
            var usable = lenient.Config.Flags.Where(f => Model.Schedulers.ParseFlags(scheduler, [f], "", out _) is null).ToList();
            lenient.Config.Flags.Clear();
            lenient.Config.Flags.AddRange(usable);
            if (WireMapper.TryToModel(lenient, out service) is null)
            {
                rejected.Add(new($"services/{id}", $"{error} (that flag is ignored; the service is programmed)"));
                error = null;
            }
        }
        if (error is null) return service;
        rejected.Add(new($"services/{id}", error.ToString()));
        return null;
    }

    /// <summary>An md-table service's configuration with its stored table, when the dataplane programs stored tables.</summary>
    internal static ServiceConfig WithStoredTable(ServiceConfig config, byte[]? table, bool withTables) =>
        withTables && table is not null && Model.Schedulers.UsesStoredTable(config) ? config with { Table = new StoredTable(table) } : config;

    /// <summary>The servers of service <paramref name="id"/> (its key <paramref name="key"/>) as the dataplane should have them.</summary>
    internal static Dictionary<RealServerKey, RealServerConfig> DecodeServers(string id, ServiceKey key, IEnumerable<Wire.RealServer> stored, List<RejectedRecord> rejected, List<HealthTarget> checks)
    {
        var servers = new Dictionary<RealServerKey, RealServerConfig>();
        foreach (var wire in stored)
        {
            var where = $"servers/{id}/{wire.Key?.Ip}:{wire.Key?.Port}";
            if (WireMapper.TryToModel(wire, out var server) is { } serverError)
            {
                if (WithinHealthBounds(wire) is not { } bounded || WireMapper.TryToModel(bounded, out server) is not null)
                {
                    rejected.Add(new(where, serverError.ToString()));
                    continue;
                }
                // Stored before the API had bounds (or by the Go merlin): keep it programmed, checked at the nearest bound.
                rejected.Add(new(where, $"{serverError} (checked every {Durations.Format(server!.HealthCheck.Period)} with a {Durations.Format(server.HealthCheck.Timeout)} timeout instead; the server is programmed)"));
            }
            if (!key.IsFirewallMark && Validation.SameFamily(server!.Key.Address, key.Family, "key.ip") is { } familyError)
            {
                rejected.Add(new(where, familyError.ToString()));
                continue;
            }
            // A draining server gets weight 0 (new flows go elsewhere, established ones stay) until it is
            // removed; the store keeps its configured weight for an undrain.
            servers[server!.Key] = server.DrainDeadline is null ? server.Config : server.Config with { Weight = 0 };
            if (server.HealthCheck.Endpoint is not null) checks.Add(new HealthTarget(key, server.Key, server.HealthCheck));
        }
        return servers;
    }

    /// <summary>
    /// A stored server whose health-check period or timeout is outside today's bounds, with both moved to the
    /// nearest bound; null when they are not valid durations at all or within bounds (then something else is wrong).
    /// </summary>
    private static Wire.RealServer? WithinHealthBounds(Wire.RealServer wire)
    {
        if (wire.HealthCheck is not { Period: { } p, Timeout: { } t }) return null;
        if (WireMapper.TryDuration(p, "", out var period) is not null || WireMapper.TryDuration(t, "", out var timeout) is not null) return null;
        if (period <= TimeSpan.Zero || timeout <= TimeSpan.Zero) return null;
        if (period >= Validation.MinHealthPeriod && period <= Validation.MaxHealthPeriod && timeout >= Validation.MinHealthTimeout) return null;
        var newPeriod = TimeSpan.FromTicks(Math.Clamp(period.Ticks, Validation.MinHealthPeriod.Ticks, Validation.MaxHealthPeriod.Ticks));
        var newTimeout = TimeSpan.FromTicks(Math.Clamp(timeout.Ticks, Validation.MinHealthTimeout.Ticks, newPeriod.Ticks));
        var bounded = wire.Clone();
        bounded.HealthCheck.Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(newPeriod);
        bounded.HealthCheck.Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(newTimeout);
        return bounded;
    }
}
