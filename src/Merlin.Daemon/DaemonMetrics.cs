using System.Diagnostics.Metrics;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.PrometheusExport;
using Merlin.Reconciler;
using Prometheus;

namespace Merlin.Daemon;

/// <summary>
/// The daemon's /metrics: the instruments of the <c>merlin</c> Meter (the reconciler's, and the gauges here that
/// describe the node as a whole), exported by one <see cref="MeterExporter"/> per process into prometheus-net's default
/// registry beside its process_* and dotnet_* families. A new metric is an instrument on a Meter named
/// <see cref="ReconcilePass.MeterName"/> plus its label names in <see cref="Labels"/>.
/// </summary>
internal static class DaemonMetrics
{
    /// <summary>
    /// Label names of every instrument of the daemon's Meter, so each family is on /metrics from the start; in the order
    /// the series have always shown them.
    /// </summary>
    private static readonly Dictionary<string, string[]> Labels = new(ReconcilePass.InstrumentLabels, StringComparer.Ordinal)
    {
        ["store_up"] = [], ["ready"] = [], ["services"] = [], ["servers"] = [],
        ["store_records_not_by_merlin"] = ["kind"],
        ["sysctl_drift"] = ["name"], ["dataplane_warnings"] = [],
        ["table_slots_moved"] = ["service"], ["tables_recomputed"] = [],
        ["announcer_state"] = ["mode", "state"], ["announcer_healthy"] = [], ["announcer_restarts"] = [],
        ["node_drained"] = [], ["vip_announced"] = ["management", "vip"], ["bgp_session_up"] = ["peer"],
        ["server_healthy"] = ["server", "service"],
        ["health_checks"] = ["result"], ["health_checks_skipped"] = [], ["health_check_delay_seconds"] = [],
        ["ipvs_connections"] = ["service"], ["ipvs_in_packets"] = ["service"], ["ipvs_out_packets"] = ["service"],
        ["ipvs_in_bytes"] = ["service"], ["ipvs_out_bytes"] = ["service"],
        ["ipvs_server_connections"] = ["service", "server"], ["ipvs_server_in_packets"] = ["service", "server"],
        ["ipvs_server_in_bytes"] = ["service", "server"],
        ["ipvs_server_active_connections"] = ["service", "server"], ["ipvs_server_inactive_connections"] = ["service", "server"],
    };

    /// <summary>One per process: the families are process-wide, as prometheus-net's default registry is.</summary>
    private static readonly Lazy<MeterExporter> Exporter = new(() =>
    {
        // prometheus-net's defaults, configured before the first scrape: its own meter adapter is kept off the merlin
        // Meter (the exporter has it) and off the runtime's meters (the process_* and dotnet_* collectors cover them,
        // and their names break Prometheus's conventions, as do the event counters: `promtool check metrics`).
        Prometheus.Metrics.ConfigureMeterAdapter(o => o.InstrumentFilterPredicate = i => i.Meter.Name is not (ReconcilePass.MeterName or "System.Runtime"));
        Prometheus.Metrics.SuppressDefaultMetrics(new SuppressDefaultMetricOptions { SuppressEventCounters = true });
        return new MeterExporter(Prometheus.Metrics.DefaultRegistry, m => m.Name == ReconcilePass.MeterName, Labels);
    });

    public static void Register(IServiceProvider services)
    {
        var exporter = Exporter.Value;
        var status = services.GetRequiredService<ReconcilerStatus>();
        var meter = new Meter(ReconcilePass.MeterName);
        // A daemon rebuilt in the same process (tests) must not leave gauges reading a stopped one.
        var stopped = services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopped;
        stopped.Register(meter.Dispose);
        meter.CreateObservableGauge("store_up", () => status.Current.StoreReachable ? 1 : 0, description: "1 when the last read of the store succeeded");
        meter.CreateObservableGauge("ready", () => status.Current.Ready && status.Current.StoreReachable ? 1 : 0, description: "1 when the dataplane has been programmed from a reachable store");
        meter.CreateObservableGauge("services", () => status.Current.Services, description: "Virtual services in the desired state");
        meter.CreateObservableGauge("servers", () => status.Current.Servers, description: "Real servers in the desired state");
        meter.CreateObservableGauge("store_records_not_by_merlin",
            () => status.Current.Origins is not { } o ? [] : new[]
            {
                new Measurement<int>(o.ServicesNotByMerlin, new KeyValuePair<string, object?>("kind", "service")),
                new Measurement<int>(o.ServersNotByMerlin, new KeyValuePair<string, object?>("kind", "server")),
                new Measurement<int>(o.OrphanedServers, new KeyValuePair<string, object?>("kind", "orphaned_server")),
            },
            description: "Store records last written by a Go merlin (or a Merlin from before merlin_digest), by kind; orphaned_server: " +
                "server keys whose service does not exist (a Go merlin's service del). Above 0, a Go merlin shares or shared the store");

        // Declared with every dataplane (empty where it has no sysctls or counters), so dashboards and alerts find them.
        var dataplane = services.GetRequiredService<IDataplane>();
        var diagnostics = dataplane as IDataplaneDiagnostics;
        meter.CreateObservableGauge("sysctl_drift",
            () => diagnostics?.Sysctls.Select(s => new Measurement<int>(s.Drifted ? 1 : 0, new KeyValuePair<string, object?>("name", s.Name))) ?? [],
            description: "1 when a kernel setting the dataplane depends on differs from the value it wants");
        meter.CreateObservableGauge("dataplane_warnings", () => diagnostics?.Warnings.Count ?? 0,
            description: "Conditions that keep part of the desired state from working (see meradm status)");
        var tables = dataplane as IProgrammedTables;
        meter.CreateObservableCounter("table_slots_moved",
            () => tables?.Tables.Select(t => new Measurement<long>(t.SlotsMoved, new KeyValuePair<string, object?>("service", t.Service.ToString()))) ?? [],
            description: "Slots of an md-table service's table that changed owner, summed over the table changes this node programmed");
        meter.CreateObservableGauge("tables_recomputed", () => tables?.Tables.Count(t => t.Problem is not null) ?? 0,
            description: "md-table services whose stored table is damaged or not made for their servers, so this node programs its recomputation (see meradm status)");
        var kernelCounters = KernelCounterMetrics.Register(meter, dataplane as IDataplaneCounters, exporter);
        stopped.Register(kernelCounters.Dispose);

        var announcer = services.GetRequiredService<Merlin.Announcer.IAnnouncer>();
        meter.CreateObservableGauge("announcer_state",
            () => announcer.State.Role == Merlin.Announcer.AnnouncerRole.None ? [] : System.Enum.GetValues<Merlin.Announcer.AnnouncerRole>()
                .Where(r => r != Merlin.Announcer.AnnouncerRole.None)
                .Select(r => new Measurement<int>(announcer.State.Role == r ? 1 : 0, new("mode", announcer.Mode), new("state", r.ToString().ToUpperInvariant()))),
            description: "1 for the announcer's current VRRP state (MASTER, BACKUP, FAULT, INIT, STOPPED), 0 for the others; absent where roles do not apply");
        var drain = services.GetRequiredService<NodeDrain>();
        meter.CreateObservableGauge("node_drained", () => drain.Drained ? 1 : 0,
            description: "1 while the node is drained (meradm node drain): it announces no VIP");
        meter.CreateObservableGauge("announcer_healthy", () => announcer.State.Healthy ? 1 : 0,
            description: "1 while the announcer's engine runs and is not in FAULT (a part of /readyz)");
        meter.CreateObservableGauge("vip_announced",
            () => announcer.State.Vips.Select(v => new Measurement<int>(v.Announced ? 1 : 0, new("vip", v.Address.ToString()), new("management", v.Management ? "true" : "false"))),
            description: "1 while this node holds (VRRP) or announces (BGP) the VIP");
        meter.CreateObservableCounter("announcer_restarts", () => announcer.State.Restarts,
            description: "Times the announcer's engine (keepalived, gobgpd) died and was restarted");
        var options = services.GetRequiredService<DaemonOptions>();
        meter.CreateObservableGauge("bgp_session_up",
            () => announcer is not Merlin.Announcer.Bgp.GobgpAnnouncer bgp || options.Bgp is not { } configured ? [] : configured.Peers.Select(p =>
                new Measurement<int>(bgp.Sessions.Any(s => s.Address.Equals(p.Address) && s.Established) ? 1 : 0, new KeyValuePair<string, object?>("peer", p.Address.ToString()))),
            description: "1 while the BGP session with a configured router is established, 0 otherwise (--announcer bgp only)");

        var health = services.GetRequiredService<Merlin.Health.HealthChecker>();
        meter.CreateObservableGauge("server_healthy",
            () => health.Report().Where(r => r.Verdict != HealthVerdict.Unknown).Select(r => new Measurement<int>(r.Verdict == HealthVerdict.Up ? 1 : 0,
                new KeyValuePair<string, object?>("service", r.Service.ToString()), new KeyValuePair<string, object?>("server", r.Server.ToString()))),
            description: "1 while a real server's health check passes, 0 while it fails (servers without a check or a verdict are absent)");
        meter.CreateObservableCounter("health_checks", () => new[]
        {
            new Measurement<long>(health.Succeeded, new KeyValuePair<string, object?>("result", "healthy")),
            new Measurement<long>(health.FailedChecks, new KeyValuePair<string, object?>("result", "unhealthy")),
        }, description: "Health checks run, by result");
        meter.CreateObservableCounter("health_checks_skipped", () => health.Skipped,
            description: "Health checks not started when due because the server's previous check had not finished");
        meter.CreateObservableCounter("health_check_delay_seconds", () => health.Delay.TotalSeconds,
            description: "Seconds health checks started after they were due, summed: divided by the checks run, the mean delay");
    }
}

/// <summary>
/// The kernel's per-service and per-server counters on /metrics, read from the dataplane when Prometheus
/// scrapes (one dump per service; a scrape of a large table costs what a full read does).
/// </summary>
internal sealed class KernelCounterMetrics
{
    private IReadOnlyList<ServiceCounters> _last = [];

    /// <summary>
    /// Declares the instruments on <paramref name="meter"/> (with every dataplane, so dashboards find them); when
    /// <paramref name="source"/> counts, reads it once before each scrape. Dispose the result to stop reading.
    /// </summary>
    public static IDisposable Register(Meter meter, IDataplaneCounters? source, MeterExporter exporter)
    {
        var counters = new KernelCounterMetrics();
        counters.PerService(meter, "ipvs_connections", "Connections scheduled by the kernel, per service", t => t.Connections);
        counters.PerService(meter, "ipvs_in_packets", "Packets from clients, per service", t => t.InPackets);
        counters.PerService(meter, "ipvs_out_packets", "Packets to clients through this node (NAT only), per service", t => t.OutPackets);
        counters.PerService(meter, "ipvs_in_bytes", "Bytes from clients, per service", t => t.InBytes);
        counters.PerService(meter, "ipvs_out_bytes", "Bytes to clients through this node (NAT only), per service", t => t.OutBytes);
        meter.CreateObservableCounter("ipvs_server_connections", () => counters.PerServer(r => (long)r.Totals.Connections), description: "Connections scheduled to a real server");
        meter.CreateObservableCounter("ipvs_server_in_packets", () => counters.PerServer(r => (long)r.Totals.InPackets), description: "Packets forwarded to a real server");
        meter.CreateObservableCounter("ipvs_server_in_bytes", () => counters.PerServer(r => (long)r.Totals.InBytes), description: "Bytes forwarded to a real server");
        meter.CreateObservableGauge("ipvs_server_active_connections", () => counters.PerServer(r => (long)r.ActiveConnections), description: "Established connections to a real server");
        meter.CreateObservableGauge("ipvs_server_inactive_connections", () => counters.PerServer(r => (long)r.InactiveConnections), description: "Connections to a real server in other states");
        if (source is null) return exporter.BeforeScrape(_ => Task.CompletedTask);
        return exporter.BeforeScrape(async ct =>
        {
            try { Volatile.Write(ref counters._last, await source.ReadCountersAsync(ct)); }
            catch (Exception e) when (e is not OperationCanceledException) { } // the scrape shows the last values
        });
    }

    private void PerService(Meter meter, string name, string description, Func<TrafficCounters, ulong> value) =>
        meter.CreateObservableCounter(name, () => Volatile.Read(ref _last).Select(s =>
            new Measurement<long>((long)value(s.Totals), new KeyValuePair<string, object?>("service", s.Service.ToString()))), description: description);

    private IEnumerable<Measurement<long>> PerServer(Func<ServerCounters, long> value) =>
        Volatile.Read(ref _last).SelectMany(s => s.Servers.Select(r => new Measurement<long>(value(r),
            new KeyValuePair<string, object?>("service", s.Service.ToString()), new KeyValuePair<string, object?>("server", r.Server.ToString()))));
}
