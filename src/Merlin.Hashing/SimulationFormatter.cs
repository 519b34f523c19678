using System.Globalization;
using System.Text;

namespace Merlin.Hashing;

/// <summary>Plain-text rendering of a <see cref="SimulationReport"/>, the algorithms side by side.</summary>
public static class SimulationFormatter
{
    public static string Format(SimulationReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var o = report.Options;
        var algs = report.Algorithms;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture,
            $"{report.ServerCount} servers, {report.FlowCount} flows; hashing {(o.HashPort ? "address and port" : "address only")}, ");
        sb.Append(CultureInfo.InvariantCulture, $"fallback {(o.Fallback ? "on" : "off")}, jhash seed 0x{o.HashSeed:x8}\n");
        sb.Append("table sizes: ");
        sb.AppendJoin(", ", algs.Select(a => $"{a.Name} {a.TableSize.ToString(CultureInfo.InvariantCulture)}"));
        sb.Append('\n');

        // Distribution.
        int idWidth = Math.Max(6, report.Algorithms.SelectMany(a => a.Servers).Select(s => s.Id.Length).DefaultIfEmpty(6).Max());
        const int col = 10;
        sb.Append("\nshare of flows\n");
        sb.Append("server".PadRight(idWidth)).Append("  weight".PadLeft(8)).Append("expected".PadLeft(col));
        foreach (var a in algs) sb.Append(a.Name.PadLeft(col));
        sb.Append('\n');
        var first = algs.FirstOrDefault();
        if (first is not null)
        {
            for (int i = 0; i < first.Servers.Count; i++)
            {
                var s = first.Servers[i];
                sb.Append(s.Id.PadRight(idWidth)).Append(Num(s.Weight).PadLeft(8)).Append(Pct(s.ExpectedShare).PadLeft(col));
                foreach (var a in algs) sb.Append(Pct(a.Servers[i].Share).PadLeft(col));
                sb.Append('\n');
            }
        }
        Row(sb, "max / expected", idWidth, algs, a => Ratio(a.MaxOverExpected));
        Row(sb, "min / expected", idWidth, algs, a => Ratio(a.MinOverExpected));
        if (algs.Any(a => a.Unrouted > 0)) Row(sb, "no server", idWidth, algs, a => Pct(a.Unrouted));

        // Disruption.
        sb.Append("\nflows that move (in brackets: needlessly, between two servers that did not change)\n");
        var changes = first?.Disruptions ?? [];
        int changeWidth = Math.Max(idWidth + 16, 24);
        sb.Append("change".PadRight(changeWidth)).Append("fair".PadLeft(col));
        foreach (var a in algs) sb.Append(a.Name.PadLeft(col + 9));
        sb.Append('\n');
        for (int c = 0; c < changes.Count; c++)
        {
            var d = changes[c];
            var label = d.Change == "add" ? $"add {d.ServerId} w{Num(d.Weight)}" : $"{d.Change} {d.ServerId}";
            sb.Append(label.PadRight(changeWidth)).Append(Pct(d.Ideal).PadLeft(col));
            foreach (var a in algs)
            {
                var x = a.Disruptions[c];
                sb.Append($"{Pct(x.Moved)} ({Pct(x.Needless)})".PadLeft(col + 9));
            }
            sb.Append('\n');
        }
        // The same as ratios: at 1,000 servers a change moves a tenth of a percent, too little to compare as percentages.
        for (int c = 0; c < changes.Count; c++)
        {
            var d = changes[c];
            if (d.Ideal <= 0) continue;
            sb.Append($"{d.Change}: moved / fair".PadRight(changeWidth)).Append("".PadLeft(col));
            foreach (var a in algs) sb.Append(Ratio(a.Disruptions[c].Moved / d.Ideal).PadLeft(col + 9));
            sb.Append('\n');
        }
        for (int c = 0; c < changes.Count; c++)
        {
            if (!algs.Any(a => a.Disruptions[c].Unrouted > 0)) continue;
            sb.Append($"no server after {changes[c].Change}".PadRight(changeWidth)).Append("".PadLeft(col));
            foreach (var a in algs) sb.Append(Pct(a.Disruptions[c].Unrouted).PadLeft(col + 9));
            sb.Append('\n');
        }
        return sb.ToString();
    }

    private static void Row(StringBuilder sb, string label, int idWidth, IEnumerable<AlgorithmReport> algs, Func<AlgorithmReport, string> cell)
    {
        sb.Append(label.PadRight(idWidth + 8 + 10));
        foreach (var a in algs) sb.Append(cell(a).PadLeft(10));
        sb.Append('\n');
    }

    private static string Pct(double x) => (x * 100).ToString("0.00", CultureInfo.InvariantCulture) + "%";
    private static string Ratio(double x) => x.ToString("0.000", CultureInfo.InvariantCulture);
    private static string Num(uint x) => x.ToString(CultureInfo.InvariantCulture);
}
