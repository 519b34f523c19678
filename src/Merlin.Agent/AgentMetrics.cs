using System.Diagnostics.Metrics;
using System.Net;
using Merlin.PrometheusExport;
using Prometheus;

namespace Merlin.Agent;

/// <summary>
/// The agent's Prometheus endpoint (<c>--metrics-address</c>, path <c>/metrics</c>): second-chance hand-offs per
/// service and kind, read from the kernel's counters at each scrape's latest sync (every 2 s). The instrument is on a
/// Meter of its own, exported like the daemon's and merlin-k8s's (<see cref="MeterExporter"/>).
/// </summary>
public sealed class AgentMetrics : IDisposable
{
    public const string MeterName = "merlin.agent";

    /// <summary>Label names of each instrument, in the order the series show them.</summary>
    private static readonly Dictionary<string, string[]> Labels = new(StringComparer.Ordinal)
    {
        ["agent_second_chance_packets"] = ["service", "kind"],
    };

    private readonly Meter _meter = new(MeterName);
    private readonly MeterExporter _exporter;
    private readonly MetricServer _server;

    public AgentMetrics(IPEndPoint address, Func<IReadOnlyDictionary<(string Service, string Kind), ulong>> handOffs)
    {
        _meter.CreateObservableCounter("agent_second_chance_packets",
            () => handOffs().Select(h => new Measurement<long>((long)h.Value, new("service", h.Key.Service), new("kind", h.Key.Kind))),
            description: "Second-chance packets of this real server by service and kind: handed (sent to the slot's previous owner), accepted (taken here: the connection is here), refused (dropped here: it is not).");
        _exporter = MeterExporter.Of(_meter, Labels);
        var host = address.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address.Address}]" : address.Address.ToString();
        _server = new MetricServer(host, address.Port, "metrics/", _exporter.Registry);
        _server.Start();
    }

    public void Dispose()
    {
        _server.Dispose();
        _exporter.Dispose();
        _meter.Dispose();
    }
}
