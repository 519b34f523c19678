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
            var error = WireMapper.TryToModel(item.Service, out var service);
            if (error?.Field == "config.flags")
            {
                // The Go merlin passed any flag to the kernel, which ignores flags a scheduler does not use.
                // Such a record must keep working after an upgrade: drop the flag, say so, program the rest.
                var lenient = item.Service.Clone();
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
            if (error is not null)
            {
                rejected.Add(new($"services/{id}", error.ToString()));
                continue;
            }
            if (services.ContainsKey(service!.Key))
            {
                rejected.Add(new($"services/{id}", $"key {service.Key} is already used by another service"));
                continue;
            }
            var servers = new Dictionary<RealServerKey, RealServerConfig>(item.Servers.Count);
            foreach (var wire in item.Servers)
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
                if (!service.Key.IsFirewallMark && Validation.SameFamily(server!.Key.Address, service.Key.Family, "key.ip") is { } familyError)
                {
                    rejected.Add(new(where, familyError.ToString()));
                    continue;
                }
                // A draining server gets weight 0 (new flows go elsewhere, established ones stay) until it is
                // removed; the store keeps its configured weight for an undrain.
                servers[server!.Key] = server.DrainDeadline is null ? server.Config : server.Config with { Weight = 0 };
                if (server.HealthCheck.Endpoint is not null) checks.Add(new HealthTarget(service.Key, server.Key, server.HealthCheck));
            }
            var config = withTables && item.Table is { } table && Model.Schedulers.UsesStoredTable(service.Config)
                ? service.Config with { Table = new StoredTable(table) }
                : service.Config;
            services[service.Key] = new ServiceState(service.Key, config, servers);
        }
        return (new DataplaneState(services), rejected, checks);
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
