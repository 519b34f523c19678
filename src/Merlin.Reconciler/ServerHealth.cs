using Merlin.Model;

namespace Merlin.Reconciler;

/// <summary>
/// The health checks as the reconciler sees them: told the whole set of checks on every pass
/// (idempotent), asked for verdicts, and raising <see cref="Changed"/> when one changes so that a pass
/// follows at once.
/// </summary>
public interface IServerHealth
{
    void Track(IReadOnlyList<HealthTarget> targets);

    HealthVerdict Verdict(ServiceKey service, RealServerKey server);

    /// <summary>Moves whenever any verdict changes, so an unchanged pass can be recognised.</summary>
    long Generation { get; }

    event Action? Changed;
}

/// <summary>
/// Folds health verdicts into the desired state, as a pure function: a server whose check says Down gets
/// weight 0 (new flows go elsewhere; established ones stay, and the server stays in the table); Up gets
/// its configured weight. Unknown — no verdict yet, e.g. right after a daemon restart — keeps the weight
/// the kernel has now, so a restart never drops a healthy server to 0 nor restores a dead one; a server
/// the kernel does not have yet starts at 0 until its first verdict. Servers without a check are as
/// configured.
/// </summary>
public static class HealthOverlay
{
    public static DataplaneState Apply(DataplaneState desired, DataplaneState actual, IReadOnlySet<(ServiceKey, RealServerKey)> checkedServers, Func<ServiceKey, RealServerKey, HealthVerdict> verdict)
    {
        if (checkedServers.Count == 0) return desired;
        var services = new Dictionary<ServiceKey, ServiceState>(desired.Services.Count);
        foreach (var (key, service) in desired.Services)
        {
            Dictionary<RealServerKey, RealServerConfig>? changed = null;
            foreach (var (server, config) in service.Servers)
            {
                if (!checkedServers.Contains((key, server))) continue;
                // Desired 0 (configured, or draining) stays 0 whatever the verdict: health only ever lowers a weight.
                if (config.Weight == 0) continue;
                var weight = verdict(key, server) switch
                {
                    HealthVerdict.Up => config.Weight,
                    HealthVerdict.Down => 0u,
                    _ => actual.Services.TryGetValue(key, out var a) && a.Servers.TryGetValue(server, out var programmed) ? programmed.Weight : 0u,
                };
                if (weight == config.Weight) continue;
                changed ??= service.Servers.ToDictionary();
                changed[server] = config with { Weight = weight };
            }
            services[key] = changed is null ? service : service with { Servers = changed };
        }
        return new DataplaneState(services, sameShapeAs: desired);
    }
}
