using System.Diagnostics.Metrics;
using Prometheus;

namespace Merlin.PrometheusExport;

/// <summary>
/// Exports the instruments of the Meters a host chooses as Prometheus families in one registry, with the types
/// Prometheus expects: counters (observable or not) as <c>_total</c> counters, gauges and up-down counters as gauges,
/// histograms with the buckets their <see cref="InstrumentAdvice{T}"/> names. A family is named
/// <c>merlin_</c> + the instrument's name. prometheus-net's own meter adapter exports counters as gauges without
/// <c>_total</c> and only starts at the first scrape (measurements before it are lost), so hosts keep it off these
/// Meters.
/// </summary>
/// <remarks>
/// Libraries create instruments on a <see cref="Meter"/> and say which label names each one's measurements carry
/// (<c>labels</c>, in the order the series show them): those families are declared (HELP, TYPE) from the start, with
/// or without series, so dashboards and alerts can rely on the names. An instrument not declared takes its labels
/// from its first measurement, in name order.
/// Observable instruments are read before each scrape; series they stop reporting (a deleted server) are dropped
/// rather than frozen at their last value.
/// </remarks>
public sealed class MeterExporter : IDisposable
{
    public const string FamilyPrefix = "merlin_";

    /// <summary>Buckets of a histogram whose instrument advises none: 0.5 ms … 16 s, suited to a reconcile pass.</summary>
    private static readonly double[] DefaultBuckets = Histogram.ExponentialBuckets(0.0005, 2, 16);

    private readonly IMetricFactory _factory;
    private readonly IReadOnlyDictionary<string, string[]> _labels;
    private readonly MeterListener _listener;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, Family> _families = new(StringComparer.Ordinal);
    private readonly List<Func<CancellationToken, Task>> _beforeScrape = [];
    private bool _disposed;

    /// <param name="registry">Where the families go (what the host serves on /metrics).</param>
    /// <param name="exports">Which Meters to export: by name for one per process, by reference for one per host object.</param>
    /// <param name="labels">Label names by instrument name (see the remarks).</param>
    public MeterExporter(CollectorRegistry registry, Func<Meter, bool> exports, IReadOnlyDictionary<string, string[]> labels)
    {
        Registry = registry;
        _factory = Metrics.WithCustomRegistry(registry);
        _labels = labels;
        _listener = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (!exports(instrument.Meter)) return;
                if (_labels.TryGetValue(instrument.Name, out var names)) FamilyFor(instrument, names);
                listener.EnableMeasurementEvents(instrument);
            },
        };
        _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _listener.Start();
        registry.AddBeforeCollectCallback(ScrapeAsync);
    }

    /// <summary>An exporter of one Meter (a host object's, by reference) into a registry of its own.</summary>
    public static MeterExporter Of(Meter meter, IReadOnlyDictionary<string, string[]> labels) =>
        new(Metrics.NewCustomRegistry(), m => ReferenceEquals(m, meter), labels);

    public CollectorRegistry Registry { get; }

    /// <summary>
    /// Runs <paramref name="refresh"/> before each scrape reads the observable instruments: for values that take an
    /// asynchronous read (the kernel's counters), which an instrument's callback cannot await. Dispose to stop it.
    /// </summary>
    public IDisposable BeforeScrape(Func<CancellationToken, Task> refresh)
    {
        lock (_gate) _beforeScrape.Add(refresh);
        return new Registration(() => { lock (_gate) _beforeScrape.Remove(refresh); });
    }

    public void Dispose()
    {
        lock (_gate) _disposed = true;
        _listener.Dispose();
    }

    /// <summary>One exported family; observable ones remember which series the last scrape saw, to drop the rest.</summary>
    private sealed class Family(Collector collector, string[] labels, Kind kind, bool observable)
    {
        public readonly Collector Collector = collector;
        public readonly string[] LabelNames = labels;
        public readonly Kind Kind = kind;
        public readonly bool Observable = observable;
        public readonly Dictionary<string[], double> Observed = new(LabelValuesComparer.Instance);
        public readonly HashSet<string[]> Exported = new(LabelValuesComparer.Instance);
    }

    private enum Kind { Counter, Gauge, UpDownCounter, Histogram }

    private static (Kind Kind, bool Observable) KindOf(Instrument instrument)
    {
        var type = instrument.GetType();
        var definition = type.IsGenericType ? type.GetGenericTypeDefinition() : type;
        return definition switch
        {
            _ when definition == typeof(Counter<>) => (Kind.Counter, false),
            _ when definition == typeof(ObservableCounter<>) => (Kind.Counter, true),
            _ when definition == typeof(UpDownCounter<>) => (Kind.UpDownCounter, false),
            _ when definition == typeof(ObservableUpDownCounter<>) => (Kind.Gauge, true),
            _ when definition == typeof(Histogram<>) => (Kind.Histogram, false),
            _ when definition == typeof(ObservableGauge<>) => (Kind.Gauge, true),
            _ => (Kind.Gauge, false), // Gauge<T>: the last value recorded
        };
    }

    private static double[] BucketsOf(Instrument instrument) => instrument switch
    {
        Histogram<double> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b],
        Histogram<long> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(v => (double)v)],
        Histogram<int> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(v => (double)v)],
        _ => DefaultBuckets,
    };

    private Family FamilyFor(Instrument instrument, string[] labels)
    {
        lock (_gate)
        {
            if (_families.TryGetValue(instrument.Name, out var family)) return family;
            var name = FamilyPrefix + instrument.Name;
            var help = instrument.Description ?? instrument.Name;
            var (kind, observable) = KindOf(instrument);
            Collector collector = kind switch
            {
                Kind.Histogram => _factory.CreateHistogram(name, help, new HistogramConfiguration { LabelNames = labels, Buckets = BucketsOf(instrument) }),
                Kind.Counter => _factory.CreateCounter(name + "_total", help, labels),
                _ => _factory.CreateGauge(name, help, labels),
            };
            family = new Family(collector, labels, kind, observable);
            _families[instrument.Name] = family;
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

    private void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var family = _labels.TryGetValue(instrument.Name, out var declared) ? FamilyFor(instrument, declared)
            : FamilyFor(instrument, [.. tags.ToArray().Select(t => t.Key).Order(StringComparer.Ordinal)]); // whatever order the tags come in
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
            case Gauge g when family.Kind == Kind.UpDownCounter: g.WithLabels(values).Inc(value); break;
            case Gauge g: g.WithLabels(values).Set(value); break;
        }
    }

    private async Task ScrapeAsync(CancellationToken ct)
    {
        List<Func<CancellationToken, Task>> refreshes;
        lock (_gate)
        {
            if (_disposed) return;
            refreshes = [.. _beforeScrape];
        }
        foreach (var refresh in refreshes) await refresh(ct);
        Observe();
    }

    /// <summary>Before each scrape: read every observable instrument and make its family exactly what was observed.</summary>
    private void Observe()
    {
        List<Family> families;
        lock (_gate)
        {
            if (_disposed) return;
            families = [.. _families.Values.Where(f => f.Observable)];
        }
        foreach (var f in families) lock (f) f.Observed.Clear();
        _listener.RecordObservableInstruments();
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

    private sealed class Registration(Action dispose) : IDisposable
    {
        private Action? _dispose = dispose;

        public void Dispose() => Interlocked.Exchange(ref _dispose, null)?.Invoke();
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
