using System.Text.RegularExpressions;

namespace Merlin.Testing;

/// <summary>
/// What a /metrics page promises the dashboards and alerts that read it: each family's name, TYPE and the label
/// names of its series, in the order the series show them. Values are left out (they change per run).
/// </summary>
public static partial class PrometheusText
{
    /// <summary>One family as scraped: its TYPE and the label names its series carry, as they come (empty while it has no series).</summary>
    public sealed record Family(string Type, IReadOnlyList<string> Labels);

    /// <summary>Every family declared with <c># TYPE</c>, with the label names of its series (histogram series' <c>le</c> left out).</summary>
    public static IReadOnlyDictionary<string, Family> Families(string scrape)
    {
        var types = TypeLine().Matches(scrape).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value, StringComparer.Ordinal);
        var labels = types.Keys.ToDictionary(k => k, _ => new List<string>(), StringComparer.Ordinal);
        foreach (Match series in SeriesLine().Matches(scrape))
        {
            var name = series.Groups[1].Value;
            var family = types.ContainsKey(name) ? name : HistogramSuffix().Replace(name, "");
            if (!labels.TryGetValue(family, out var names)) continue;
            foreach (Match label in LabelName().Matches(series.Groups[2].Value))
                if (label.Groups[1].Value != "le" && !names.Contains(label.Groups[1].Value)) names.Add(label.Groups[1].Value);
        }
        return types.ToDictionary(t => t.Key, t => new Family(t.Value, labels[t.Key]), StringComparer.Ordinal);
    }

    /// <summary>One line per family, <c>name type label,label</c>, in name order: an assertion's message shows the difference.</summary>
    public static string Describe(IEnumerable<KeyValuePair<string, Family>> families) =>
        string.Join("\n", families.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => f.Value.Labels.Count == 0 ? $"{f.Key} {f.Value.Type}" : $"{f.Key} {f.Value.Type} {string.Join(",", f.Value.Labels)}"));

    [GeneratedRegex(@"^# TYPE (\S+) (\S+)$", RegexOptions.Multiline)]
    private static partial Regex TypeLine();

    [GeneratedRegex(@"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+", RegexOptions.Multiline)]
    private static partial Regex SeriesLine();

    [GeneratedRegex(@"([a-zA-Z_][a-zA-Z0-9_]*)=""(?:[^""\\]|\\.)*""")]
    private static partial Regex LabelName();

    [GeneratedRegex("_(bucket|sum|count)$")]
    private static partial Regex HistogramSuffix();
}
