using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The daemon's /metrics as dashboards and alerts read it: every merlin_* family with the name, TYPE and labels it
/// had when the daemon exported them through two APIs (the reconciler's Meter and prometheus-net directly), before
/// both became one. A change here is a change for every dashboard and alert rule an operator wrote.
/// </summary>
public sealed class MetricsPageTests : IAsyncDisposable
{
    /// <summary>Captured from the daemon before the move to one metrics API (plus the two md-table families added since); labels (in the order the series show them) where the test makes series.</summary>
    private const string Expected = """
        merlin_announcer_healthy gauge
        merlin_announcer_restarts_total counter
        merlin_announcer_state gauge
        merlin_bgp_session_up gauge
        merlin_dataplane_operations_total counter kind,result
        merlin_dataplane_warnings gauge
        merlin_health_check_delay_seconds_total counter
        merlin_health_checks_skipped_total counter
        merlin_health_checks_total counter result
        merlin_ipvs_connections_total counter service
        merlin_ipvs_in_bytes_total counter service
        merlin_ipvs_in_packets_total counter service
        merlin_ipvs_out_bytes_total counter service
        merlin_ipvs_out_packets_total counter service
        merlin_ipvs_server_active_connections gauge service,server
        merlin_ipvs_server_connections_total counter service,server
        merlin_ipvs_server_in_bytes_total counter service,server
        merlin_ipvs_server_in_packets_total counter service,server
        merlin_ipvs_server_inactive_connections gauge service,server
        merlin_node_drained gauge
        merlin_ready gauge
        merlin_reconcile_duration_seconds histogram
        merlin_reconcile_passes_total counter result
        merlin_server_healthy gauge server,service
        merlin_servers gauge
        merlin_services gauge
        merlin_store_records_not_by_merlin gauge kind
        merlin_store_up gauge
        merlin_sysctl_drift gauge name
        merlin_table_slots_moved_total counter
        merlin_tables_recomputed gauge
        merlin_vip_announced gauge
        """;

    private readonly TempDir _dir = new("metrics-page");
    private RunningDaemon? _daemon;
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask DisposeAsync()
    {
        if (_daemon is not null) await _daemon.DisposeAsync();
        _dir.Dispose();
    }

    [Fact]
    public async Task EveryMerlinFamily_KeepsItsName_Type_AndLabels()
    {
        _daemon = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") },
            services => services.AddSingleton<IDataplane>(new CountingDataplane()));
        var (code, _, err) = await _daemon.MeradmAsync("service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh");
        Assert.True(code == 0, err);
        // Nothing listens on this loopback port: the check fails, and merlin_server_healthy has a series.
        (code, _, err) = await _daemon.MeradmAsync("server", "add", "web", "127.0.0.1:80", "-w", "1", "-f", "route",
            "--health-endpoint", $"tcp://:{LocalPorts.Free()}", "--health-period", "1s", "--health-timeout", "500ms", "--health-up", "1", "--health-down", "1");
        Assert.True(code == 0, err);

        using var http = _daemon.Health();
        var scrape = "";
        await Poll.UntilAsync(async () =>
            {
                scrape = await http.GetStringAsync("/metrics", Ct);
                return scrape.Contains("merlin_server_healthy{", StringComparison.Ordinal) && scrape.Contains("merlin_ipvs_server_active_connections{", StringComparison.Ordinal)
                       && scrape.Contains("merlin_health_checks_total{", StringComparison.Ordinal);
            }, "a scrape with the server's health and the kernel's counters", TimeSpan.FromSeconds(30), () => scrape, TimeSpan.FromMilliseconds(100), Ct);

        var families = PrometheusText.Families(scrape);
        var merlin = families.Where(f => f.Key.StartsWith("merlin_", StringComparison.Ordinal));
        Assert.Equal(Expected.Trim(), PrometheusText.Describe(merlin));
        // The process's own families stay beside them (prometheus-net's defaults).
        Assert.Equal("counter", families["process_cpu_seconds_total"].Type);
        Assert.Equal("gauge", families["process_working_set_bytes"].Type);
    }

    /// <summary>The in-memory dataplane with kernel-like counters for what it holds, so the merlin_ipvs_* families have series.</summary>
    private sealed class CountingDataplane : IDataplane, IDataplaneCounters, IDataplaneDiagnostics
    {
        private readonly InMemoryDataplane _inner = new();

        public string Name => _inner.Name;

        public IReadOnlyList<SysctlStatus> Sysctls => [new("net.ipv4.vs.conntrack", "1", "0", false, "a test's drift")];

        public IReadOnlyList<string> Warnings => [];

        public Task<DataplaneState> ReadAsync(CancellationToken ct) => _inner.ReadAsync(ct);

        public Task ApplyAsync(Operation operation, CancellationToken ct) => _inner.ApplyAsync(operation, ct);

        public Task<IReadOnlyList<ServiceCounters>> ReadCountersAsync(CancellationToken ct) =>
            Task.FromResult<IReadOnlyList<ServiceCounters>>([.. _inner.State.Services.Values.Select(s => new ServiceCounters(s.Key, new TrafficCounters(3, 4, 5, 6, 7),
                [.. s.Servers.Keys.Select(r => new ServerCounters(r, 1, 2, new TrafficCounters(3, 4, 0, 6, 0)))]))]);
    }
}
