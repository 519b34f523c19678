using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The alerting rules and the Grafana dashboard under deploy/, checked with the real tools against the series a
/// running daemon exports: promtool's checks and unit tests, and a real Prometheus scraping a daemon.
/// </summary>
public sealed partial class MonitoringTests : IAsyncLifetime
{
    private static readonly string Deploy = Path.Combine(Repository.Root, "deploy");
    private static readonly string Rules = Path.Combine(Deploy, "prometheus", "merlin-alerts.yml");
    private static readonly string Dashboard = Path.Combine(Deploy, "grafana", "merlin-dashboard.json");

    private readonly TempDir _dir = new("monitoring");
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public ValueTask DisposeAsync()
    {
        _dir.Dispose();
        return ValueTask.CompletedTask;
    }

    private static void RequirePromtool() => Requires.Command("promtool", "apt-get install prometheus (promtool comes with it)");

    /// <summary>A daemon with a service and a health-checked server, so labelled series exist too.</summary>
    private async Task<RunningDaemon> StartDaemonAsync()
    {
        var daemon = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") });
        var (code, _, err) = await daemon.MeradmAsync("service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh");
        Assert.True(code == 0, err);
        // Nothing listens on this loopback port: the check fails, and merlin_server_healthy has a series.
        (code, _, err) = await daemon.MeradmAsync("server", "add", "web", "127.0.0.1:80", "-w", "1", "-f", "route",
            "--health-endpoint", $"tcp://:{LocalPorts.Free()}", "--health-period", "1s", "--health-timeout", "500ms", "--health-up", "1", "--health-down", "1");
        Assert.True(code == 0, err);
        return daemon;
    }

    [Fact]
    public async Task AlertRules_PassPromtoolsCheck_AndTheirUnitTests()
    {
        RequirePromtool();
        var check = await RunAsync("promtool", ["check", "rules", Rules], null);
        Assert.True(check.Code == 0, check.Output);
        Assert.Contains("SUCCESS: 7 rules found", check.Output);

        var tests = Directory.GetFiles(Path.Combine(Deploy, "prometheus", "tests"), "*.test.yml").Order().ToArray();
        Assert.Equal(["announcer.test.yml", "control-plane.test.yml", "real-servers.test.yml"], tests.Select(Path.GetFileName));
        var run = await RunAsync("promtool", ["test", "rules", .. tests], null);
        Assert.True(run.Code == 0, run.Output);
        Assert.Equal(3, Regex.Count(run.Output, "SUCCESS"));
    }

    [Fact]
    public async Task TheDaemonsMetrics_PassPromtoolsCheckMetrics()
    {
        RequirePromtool();
        await using var daemon = await StartDaemonAsync();
        var metrics = await ScrapeWhenAsync(daemon, m => m.Contains("merlin_server_healthy{", StringComparison.Ordinal));

        var check = await RunAsync("promtool", ["check", "metrics"], metrics);
        Assert.True(check.Code == 0, $"promtool check metrics:\n{check.Output}");
        // Counters are counters, with _total, and the first pass is counted.
        Assert.Contains("# TYPE merlin_reconcile_passes_total counter", metrics);
        Assert.Contains("# TYPE merlin_health_checks_total counter", metrics);
        Assert.Matches(new Regex(@"^merlin_reconcile_passes_total\{result=""ok""\} [1-9]", RegexOptions.Multiline), metrics);
    }

    [Fact]
    public async Task EveryMetricTheDashboardAndTheAlertsQuery_IsOneTheDaemonExports()
    {
        await using var daemon = await StartDaemonAsync();
        var metrics = await ScrapeWhenAsync(daemon, m => m.Contains("merlin_server_healthy{", StringComparison.Ordinal));
        var families = FamilyRegex().Matches(metrics).Select(m => m.Groups[1].Value).ToHashSet();

        var queried = DashboardQueries().Concat(AlertExpressions()).SelectMany(MetricNames).ToHashSet();
        Assert.NotEmpty(queried);
        // A histogram's series are its family's name with _bucket, _sum or _count.
        var missing = queried.Where(n => !families.Contains(n) && !families.Contains(HistogramSuffix().Replace(n, ""))).Order().ToList();
        Assert.True(missing.Count == 0, $"queried but not exported by the daemon: {string.Join(", ", missing)}");
        // The dashboard shows each of what it promises.
        foreach (var needed in new[] { "merlin_ipvs_connections_total", "merlin_reconcile_duration_seconds_bucket", "merlin_server_healthy", "merlin_store_up", "merlin_announcer_state", "merlin_bgp_session_up" })
            Assert.Contains(needed, DashboardQueries().SelectMany(MetricNames));
    }

    [Fact]
    public async Task ARealPrometheus_ScrapesTheDaemon_QueriesItsSeries_AndEvaluatesTheRules()
    {
        Requires.Command("prometheus", "apt-get install prometheus");
        await using var daemon = await StartDaemonAsync();
        await using var prometheus = await PrometheusServer.StartAsync([$"127.0.0.1:{daemon.Options.HealthPort}"], [Rules], Ct);

        // The daemon's series, scraped: bounded wait for the first scrapes.
        var deadline = Stopwatch.StartNew();
        JsonElement result;
        do
        {
            result = (await prometheus.QueryAsync($"merlin_ready{{job=\"merlin\", instance=\"127.0.0.1:{daemon.Options.HealthPort}\"}}", Ct)).GetProperty("result");
            // A scrape taken before the daemon's first pass says 0; wait for one taken after it.
            if (result.GetArrayLength() > 0 && result[0].GetProperty("value")[1].GetString() == "1") break;
            await Task.Delay(250, Ct);
        } while (deadline.Elapsed < TimeSpan.FromSeconds(60));
        Assert.True(result.GetArrayLength() == 1, $"no merlin_ready series after 60 s; Prometheus's log:\n{prometheus.Log}");
        Assert.Equal("1", result[0].GetProperty("value")[1].GetString());

        // Every rule loaded and evaluated without an error.
        JsonElement groups;
        deadline.Restart();
        do
        {
            groups = (await prometheus.GetAsync("/api/v1/rules", Ct)).GetProperty("groups");
            if (groups.GetArrayLength() == 3 && groups.EnumerateArray().SelectMany(g => g.GetProperty("rules").EnumerateArray()).All(r => r.GetProperty("health").GetString() != "unknown")) break;
            await Task.Delay(250, Ct);
        } while (deadline.Elapsed < TimeSpan.FromSeconds(30));
        var rules = groups.EnumerateArray().SelectMany(g => g.GetProperty("rules").EnumerateArray()).ToList();
        Assert.Equal(7, rules.Count);
        foreach (var rule in rules)
            Assert.True(rule.GetProperty("health").GetString() == "ok", $"{rule.GetProperty("name")}: {rule.GetProperty("health")} {(rule.TryGetProperty("lastError", out var e) ? e : "")}");

        // Every dashboard query runs (PromQL a Prometheus accepts), with the node variable set to all nodes.
        foreach (var query in DashboardQueries())
            await prometheus.QueryAsync(query.Replace("$instance", ".*", StringComparison.Ordinal), Ct);
    }

    private static IEnumerable<string> DashboardQueries()
    {
        using var json = JsonDocument.Parse(File.ReadAllText(Dashboard));
        Assert.Equal("Merlin", json.RootElement.GetProperty("title").GetString());
        var exprs = new List<string>();
        foreach (var panel in json.RootElement.GetProperty("panels").EnumerateArray())
            if (panel.TryGetProperty("targets", out var targets))
                exprs.AddRange(targets.EnumerateArray().Select(t => t.GetProperty("expr").GetString()!));
        return exprs;
    }

    private static IEnumerable<string> AlertExpressions() =>
        Regex.Matches(File.ReadAllText(Rules), @"expr: (\|\n(?:\s{10,}.*\n)+|.*)").Select(m => m.Groups[1].Value);

    private static IEnumerable<string> MetricNames(string promql) => MetricRegex().Matches(promql).Select(m => m.Value);

    [GeneratedRegex(@"\bmerlin_[a-z_]+\b")]
    private static partial Regex MetricRegex();

    [GeneratedRegex(@"^# TYPE (\S+) ", RegexOptions.Multiline)]
    private static partial Regex FamilyRegex();

    [GeneratedRegex("_(bucket|sum|count)$")]
    private static partial Regex HistogramSuffix();

    private async Task<string> ScrapeWhenAsync(RunningDaemon daemon, Func<string, bool> ready)
    {
        using var http = daemon.Health();
        var deadline = Stopwatch.StartNew();
        string metrics;
        do
        {
            metrics = await http.GetStringAsync("/metrics", Ct);
            if (ready(metrics)) return metrics;
            await Task.Delay(100, Ct);
        } while (deadline.Elapsed < TimeSpan.FromSeconds(30));
        Assert.Fail($"/metrics did not have the expected series within 30 s:\n{metrics}");
        return metrics;
    }

    /// <summary>Runs a tool to completion (killed by its PID after 60 s); stdout and stderr together.</summary>
    private async Task<(int Code, string Output)> RunAsync(string file, string[] args, string? stdin)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin is not null, UseShellExecute = false };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(Ct);
        var stderr = process.StandardError.ReadToEndAsync(Ct);
        if (stdin is not null)
        {
            await process.StandardInput.WriteAsync(stdin);
            process.StandardInput.Close();
        }
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        limit.CancelAfter(TimeSpan.FromSeconds(60));
        try { await process.WaitForExitAsync(limit.Token); }
        catch (OperationCanceledException)
        {
            process.Kill();
            throw;
        }
        return (process.ExitCode, await stdout + await stderr);
    }
}
