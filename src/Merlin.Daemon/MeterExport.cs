using System.Diagnostics.Metrics;
using Prometheus;

namespace Merlin.Daemon;

/// <summary>
/// Exports the instruments of the <c>merlin</c> Meter (the reconciler's and the daemon's) on /metrics as Prometheus
/// families with the types Prometheus expects: counters as <c>_total</c> counters, gauges as gauges, histograms with
/// buckets suited to a reconcile pass. prometheus-net's own meter adapter exports counters as gauges without
/// <c>_total</c> and only starts at the first scrape (measurements before it are lost), so it is kept off this Meter.
/// One listener per process: the families are process-wide, as the registry is.
/// </summary>
internal static class MeterExport
{
    public const string MeterName = "merlin";

    /// <summary>
    /// Every instrument's label names, so each family is declared (HELP, TYPE) on /metrics from the start, with or
    /// without series: dashboards and alerts can rely on the names. An instrument not listed takes its labels from its
    /// first measurement.
    /// </summary>
    private static readonly Dictionary<string, string[]> Labels = new(StringComparer.Ordinal)
    {
        ["reconcile_passes"] = ["result"],
        ["dataplane_operations"] = ["kind", "result"],
        ["reconcile_duration_seconds"] = [],
        ["store_up"] = [], ["ready"] = [], ["services"] = [], ["servers"] = [],
        ["store_records_not_by_merlin"] = ["kind"],
        ["sysctl_drift"] = ["name"], ["dataplane_warnings"] = [],
        ["table_slots_moved"] = ["service"], ["tables_recomputed"] = [],
        ["announcer_state"] = ["mode", "state"], ["announcer_healthy"] = [], ["announcer_restarts"] = [],
        ["node_drained"] = [], ["vip_announced"] = ["vip", "management"], ["bgp_session_up"] = ["peer"],
        ["server_healthy"] = ["service", "server"],
        ["health_checks"] = ["result"], ["health_checks_skipped"] = [], ["health_check_delay_seconds"] = [],
    };

    private static readonly Lock Gate = new();
    private static MeterListener? _listener;
    private static readonly Dictionary<string, Family> Families = new(StringComparer.Ordinal);

    /// <summary>One exported family; observable ones remember which series the last scrape saw, to drop the rest.</summary>
    private sealed class Family(Collector collector, string[] labels, bool observable)
    {
        public readonly Collector Collector = collector;
        public readonly string[] LabelNames = labels;
        public readonly bool Observable = observable;
        public readonly Dictionary<string[], double> Observed = new(LabelValuesComparer.Instance);
        public readonly HashSet<string[]> Exported = new(LabelValuesComparer.Instance);
    }

    /// <summary>
    /// Configures prometheus-net's default metrics (before the first scrape; later calls do nothing) and starts the
    /// listener once per process. The runtime's meters are left out: the process_* and dotnet_* collectors cover
    /// them, and their names break Prometheus's conventions (<c>promtool check metrics</c>), as do the event counters.
    /// </summary>
    public static void Start()
    {
        lock (Gate)
        {
            if (_listener is not null) return;
            Metrics.ConfigureMeterAdapter(o => o.InstrumentFilterPredicate = i => i.Meter.Name is not (MeterName or "System.Runtime"));
            Metrics.SuppressDefaultMetrics(new SuppressDefaultMetricOptions { SuppressEventCounters = true });
            var listener = new MeterListener
            {
                InstrumentPublished = (instrument, l) =>
                {
                    if (instrument.Meter.Name != MeterName) return;
                    if (Labels.TryGetValue(instrument.Name, out var names)) FamilyFor(instrument, names);
                    l.EnableMeasurementEvents(instrument);
                },
            };
            listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
            listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
            listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
            listener.Start();
            _listener = listener;
            Metrics.DefaultRegistry.AddBeforeCollectCallback(Observe);
        }
    }

    private static bool IsObservable(Instrument i) =>
        i.GetType().Name.StartsWith("Observable", StringComparison.Ordinal);

    private static Family FamilyFor(Instrument instrument, string[] labels)
    {
        lock (Gate)
        {
            if (Families.TryGetValue(instrument.Name, out var family)) return family;
            labels = [.. labels.Order(StringComparer.Ordinal)]; // in name order, as the series looked before this exporter
            var name = $"{MeterName}_{instrument.Name}";
            var help = instrument.Description ?? instrument.Name;
            var kind = instrument.GetType().Name;
            Collector collector = kind switch
            {
                _ when kind.StartsWith("Histogram", StringComparison.Ordinal) => Metrics.CreateHistogram(name, help,
                    new HistogramConfiguration { LabelNames = labels, Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) }), // 0.5 ms … 16 s
                _ when kind.Contains("Counter", StringComparison.Ordinal) => Metrics.CreateCounter(name + "_total", help, labels),
                _ => Metrics.CreateGauge(name, help, labels),
            };
            family = new Family(collector, labels, IsObservable(instrument));
            Families[instrument.Name] = family;
            return family;
        }
    }

    private static string[] Values(string[] names, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var values = new string[names.Length];
        for (var n = 0; n < names.Length; n++)
        {
            values[n] = "";
            foreach (var tag in tags)
                if (tag.Key == names[n]) { values[n] = tag.Value?.ToString() ?? ""; break; }
        }
        return values;
    }

    private static void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var family = Labels.TryGetValue(instrument.Name, out var declared) ? FamilyFor(instrument, declared)
            : FamilyFor(instrument, tags.ToArray().Select(t => t.Key).ToArray());
        var values = Values(family.LabelNames, tags);
        if (family.Observable)
        {
            lock (family) family.Observed[values] = value; // applied in Observe, which knows the whole set
            return;
        }
        switch (family.Collector)
        {
            case Counter c: c.WithLabels(values).Inc(value); break;
            case Histogram h: h.WithLabels(values).Observe(value); break;
            case Gauge g: g.WithLabels(values).Set(value); break;
        }
    }

    /// <summary>Before each scrape: read every observable instrument and make its family exactly what was observed.</summary>
    private static void Observe()
    {
        MeterListener listener;
        List<Family> families;
        lock (Gate)
        {
            listener = _listener!;
            families = Families.Values.Where(f => f.Observable).ToList();
        }
        foreach (var f in families) lock (f) f.Observed.Clear();
        listener.RecordObservableInstruments();
        foreach (var f in families)
        {
            lock (f)
            {
                foreach (var (values, value) in f.Observed)
                {
                    switch (f.Collector)
                    {
                        case Counter c: c.WithLabels(values).IncTo(value); break;
                        case Gauge g: g.WithLabels(values).Set(value); break;
                    }
                }
                // Series of servers, VIPs or peers that went away are dropped, not frozen at their last value.
                foreach (var gone in f.Exported.Where(v => !f.Observed.ContainsKey(v)).ToList())
                {
                    switch (f.Collector)
                    {
                        case Counter c: c.RemoveLabelled(gone); break;
                        case Gauge g: g.RemoveLabelled(gone); break;
                    }
                    f.Exported.Remove(gone);
                }
                f.Exported.UnionWith(f.Observed.Keys);
            }
        }
    }

    private sealed class LabelValuesComparer : IEqualityComparer<string[]>
    {
        public static readonly LabelValuesComparer Instance = new();

        public bool Equals(string[]? x, string[]? y) => x is not null && y is not null && x.AsSpan().SequenceEqual(y);

        public int GetHashCode(string[] values)
        {
            var hash = new HashCode();
            foreach (var v in values) hash.Add(v, StringComparer.Ordinal);
            return hash.ToHashCode();
        }
    }
}
