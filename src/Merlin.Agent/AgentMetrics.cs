using System.Net;
using Prometheus;

namespace Merlin.Agent;

/// <summary>
/// The agent's Prometheus endpoint (<c>--metrics-address</c>, path <c>/metrics</c>): second-chance hand-offs per
/// service and kind, read from the kernel's counters at each scrape's latest sync (every 2 s).
/// </summary>
public sealed class AgentMetrics : IDisposable
{
    private readonly MetricServer _server;

    public AgentMetrics(IPEndPoint address, Func<IReadOnlyDictionary<(string Service, string Kind), ulong>> handOffs)
    {
        var registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(registry);
        var packets = factory.CreateCounter("merlin_agent_second_chance_packets_total",
            "Second-chance packets of this real server by service and kind: handed (sent to the slot's previous owner), accepted (taken here: the connection is here), refused (dropped here: it is not).",
            "service", "kind");
        registry.AddBeforeCollectCallback(() =>
        {
            foreach (var ((service, kind), value) in handOffs()) packets.WithLabels(service, kind).IncTo(value);
        });
        var host = address.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address.Address}]" : address.Address.ToString();
        _server = new MetricServer(host, address.Port, "metrics/", registry);
        _server.Start();
    }

    public void Dispose() => _server.Dispose();
}
