using Merlin.Model;

namespace Merlin.Dataplane.Abstractions;

/// <summary>
/// A mutable service table with the kernel's rules: no duplicate service or server, no server without
/// its service, no service deleted while it still has servers (our plans never do that). Breaking a
/// rule throws, which is how property tests catch an unsafe plan order.
/// </summary>
public sealed class ServiceTable
{
    private readonly Dictionary<ServiceKey, (ServiceConfig Config, Dictionary<RealServerKey, RealServerConfig> Servers)> _services = new();

    public ServiceTable() { }

    public ServiceTable(DataplaneState state)
    {
        foreach (var (key, s) in state.Services) _services[key] = (s.Config, s.Servers.ToDictionary());
    }

    public void Apply(Operation op)
    {
        switch (op)
        {
            case AddService a:
                if (!_services.TryAdd(a.Service, (a.Config, new()))) throw new InvalidOperationException($"{op}: service exists");
                break;
            case UpdateService u:
                _services[u.Service] = (u.Config, Existing(op).Servers);
                break;
            case DeleteService d:
                if (Existing(op).Servers.Count != 0) throw new InvalidOperationException($"{op}: servers still present");
                _services.Remove(d.Service);
                break;
            case AddServer s:
                if (!Existing(op).Servers.TryAdd(s.Server, s.Config)) throw new InvalidOperationException($"{op}: server exists");
                break;
            case UpdateServer s:
                var servers = Existing(op).Servers;
                if (!servers.ContainsKey(s.Server)) throw new InvalidOperationException($"{op}: no such server");
                servers[s.Server] = s.Config;
                break;
            case DeleteServer s:
                if (!Existing(op).Servers.Remove(s.Server)) throw new InvalidOperationException($"{op}: no such server");
                break;
            default:
                throw new ArgumentException($"unknown operation {op}", nameof(op));
        }
    }

    /// <summary>One service as a new <see cref="ServiceState"/> (a copy of its servers), or null if absent.</summary>
    public ServiceState? StateOf(ServiceKey key) =>
        _services.TryGetValue(key, out var s) ? new ServiceState(key, s.Config, s.Servers.ToDictionary()) : null;

    public DataplaneState ToState() =>
        new(_services.ToDictionary(kv => kv.Key, kv => new ServiceState(kv.Key, kv.Value.Config, kv.Value.Servers.ToDictionary())));

    private (ServiceConfig Config, Dictionary<RealServerKey, RealServerConfig> Servers) Existing(Operation op) =>
        _services.TryGetValue(op.Service, out var s) ? s : throw new InvalidOperationException($"{op}: no such service");
}
