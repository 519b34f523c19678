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
    public static (DataplaneState State, IReadOnlyList<RejectedRecord> Rejected, IReadOnlyList<HealthTarget> Checks) Build(StoreSnapshot snapshot)
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
                    rejected.Add(new(where, serverError.ToString()));
                    continue;
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
            services[service.Key] = new ServiceState(service.Key, service.Config, servers);
        }
        return (new DataplaneState(services), rejected, checks);
    }
}
