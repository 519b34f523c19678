using System.Text.RegularExpressions;
using Merlin.Kubernetes.Controller;
using Merlin.PrometheusExport;
using Merlin.Testing;

namespace Merlin.Kubernetes.Tests.Controller;

/// <summary>
/// merlin-k8s's /metrics as dashboards and alerts read it: every family with the name, TYPE, labels and histogram
/// buckets it had when the controller wrote prometheus-net collectors directly, before it moved to the one metrics API
/// (a Meter exported by <see cref="MeterExporter"/>, as merlin-k8s's Program wires it). ProgramTests checks the same
/// names and types on the running binary.
/// </summary>
public sealed partial class ControllerMetricsTests
{
    /// <summary>Captured from merlin-k8s before the move; labels in the order the series show them.</summary>
    private const string Expected = """
        merlin_k8s_first_sync_seconds gauge
        merlin_k8s_leader gauge
        merlin_k8s_merlin_writes_total counter
        merlin_k8s_pool_addresses gauge pool,state
        merlin_k8s_queue_depth gauge
        merlin_k8s_reconcile_duration_seconds histogram
        merlin_k8s_reconcile_errors_total counter reason
        """;

    private static async Task<string> ScrapeAsync(MeterExporter exporter)
    {
        using var page = new MemoryStream();
        await exporter.Registry.CollectAndExportAsTextAsync(page, TestContext.Current.CancellationToken);
        return System.Text.Encoding.UTF8.GetString(page.ToArray());
    }

    [Fact]
    public async Task EveryFamily_KeepsItsName_Type_Labels_AndBuckets()
    {
        using var metrics = new ControllerMetrics();
        using var exporter = MeterExporter.Of(metrics.Meter, ControllerMetrics.InstrumentLabels);
        var depth = 3;
        metrics.ObserveQueueDepth(() => depth);
        metrics.Leader.Record(1);
        metrics.PoolAddresses.Record(11, new("pool", "default"), new("state", "total"));
        // Tags in another order than the labels: the series still show pool before state.
        metrics.PoolAddresses.Record(1, new("state", "used"), new("pool", "default"));
        metrics.ReconcileSeconds.Record(0.003);
        metrics.ReconcileErrors.Add(1, new KeyValuePair<string, object?>("reason", "Conflict"));
        metrics.MerlinWrites.Add(2);
        metrics.FirstSyncSeconds.Record(1.5);

        var page = await ScrapeAsync(exporter);

        Assert.Equal(Expected, PrometheusText.Describe(PrometheusText.Families(page)));
        Assert.Contains("merlin_k8s_leader 1\n", page);
        Assert.Contains("merlin_k8s_pool_addresses{pool=\"default\",state=\"total\"} 11\n", page);
        Assert.Contains("merlin_k8s_pool_addresses{pool=\"default\",state=\"used\"} 1\n", page);
        Assert.Contains("merlin_k8s_reconcile_errors_total{reason=\"Conflict\"} 1\n", page);
        Assert.Contains("merlin_k8s_merlin_writes_total 2\n", page);
        Assert.Contains("merlin_k8s_queue_depth 3\n", page);
        Assert.Contains("merlin_k8s_first_sync_seconds 1.5\n", page);
        Assert.Contains("merlin_k8s_reconcile_duration_seconds_count 1\n", page);
        // The buckets it had: 1 ms doubling to 8.192 s (prometheus-net's ExponentialBuckets(0.001, 2, 14)).
        Assert.Equal(["0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"],
            BucketBound().Matches(page).Select(m => m.Groups[1].Value));
    }

    [Fact]
    public async Task BeforeAnything_IsMeasured_EveryFamilyIsDeclared_AndTheUnlabelledOnesReadZero()
    {
        // What a replica serves while it is still a standby: dashboards find every family from the first scrape.
        using var metrics = new ControllerMetrics();
        using var exporter = MeterExporter.Of(metrics.Meter, ControllerMetrics.InstrumentLabels);
        metrics.ObserveQueueDepth(() => 0);

        var page = await ScrapeAsync(exporter);

        Assert.Equal(Expected.Split('\n').Select(line => line.Split(' ')[0]),
            PrometheusText.Families(page).Keys.Order(StringComparer.Ordinal));
        foreach (var family in new[] { "merlin_k8s_leader", "merlin_k8s_merlin_writes_total", "merlin_k8s_queue_depth", "merlin_k8s_first_sync_seconds" })
            Assert.Contains($"\n{family} 0\n", page);
    }

    [GeneratedRegex("""^merlin_k8s_reconcile_duration_seconds_bucket\{le="([^"]+)"\}""", RegexOptions.Multiline)]
    private static partial Regex BucketBound();
}
