using System.Text;
using System.Text.RegularExpressions;

namespace Merlin.PacketPath;

/// <summary>
/// Hand-made variants of the rules Merlin programmed for the measured service, to find what its per-packet
/// cost is made of. Each is a text change to the rules as <c>nft list</c> prints them (the measured
/// service's group chain, and the ingress chain), applied in one <c>nft -f</c> transaction and undone by
/// writing the listed rules back. Never a behaviour to ship as is: some drop what Merlin needs (the refresh, the pin).
/// </summary>
public static partial class RuleVariants
{
    /// <summary>The variants by name, each with what it changes.</summary>
    public static readonly IReadOnlyDictionary<string, string> Known = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["relisted"] = "Merlin's rules written back as listed (checks that listing and rewriting changes nothing)",
        ["norefresh"] = "a pinned flow's packet does not refresh its pin (no update @flows4 on the pinned path)",
        ["sampled16"] = "a pinned flow's pin refreshed by one packet in 16 (numgen random), the other 15 only looked up",
        ["nopin"] = "no pinned-flow lookup at all: every packet hashed into the Maglev map (one-packet scheduling)",
        ["novmap"] = "the service matched by a plain rule ahead of the dispatch vmap, then a jump to its chain",
        ["sized"] = "the dispatch map svc4 declared with a size, so the kernel picks its fixed-size hash rather than rhash",
        ["inline"] = "the service matched by a plain rule in ingress, the group chain's rules inlined there (no vmap, no jump)",
        ["pinlast"] = "the pinned-flow rule after the dispatch vmap, in the service's chain (the layout before the pin moved to ingress)",
    };

    /// <summary>The measured service's chains as listed, to change and to restore.</summary>
    public sealed record Listed(string Table, string GroupChain, IReadOnlyList<string> GroupRules, IReadOnlyList<string> IngressRules, string ServiceMatch,
        IReadOnlyList<string> Sets)
    {
        /// <summary>The ingress rules' match of the load balancer's own MAC (the first words of <see cref="ServiceMatch"/>).</summary>
        public Regex OwnMatch() => new("^" + Regex.Escape(string.Join(' ', ServiceMatch.Split(' ').Take(3))) + " ");
    }

    /// <summary>Reads the chain the dispatch map sends <paramref name="serviceKey"/> (<c>vip . udp . port</c>) to, and the ingress chain.</summary>
    public static async Task<Listed> ListAsync(string ns, string table, string vip, int port, string ownMac, CancellationToken ct)
    {
        var map = await Commands.RunAsync(["ip", "netns", "exec", ns, "nft", "list", "map", "netdev", table, "svc4"], ct: ct);
        var jump = Regex.Match(map, $@"{Regex.Escape(vip)} \. udp \. {port} : (?:jump|goto) (\S+?)[,\s}}]");
        if (!jump.Success) throw new InvalidOperationException($"the dispatch map has no element for {vip} . udp . {port}: {map}");
        var chain = jump.Groups[1].Value;
        var group = await RulesAsync(ns, table, chain, ct);
        // The set "sized" re-declares, as listed: nft reads its own listing back as a script.
        return new Listed(table, chain, group, await RulesAsync(ns, table, "ingress", ct),
            $"ether daddr {ownMac} ip daddr {vip} udp dport {port}", [map]);
    }

    private static async Task<List<string>> RulesAsync(string ns, string table, string chain, CancellationToken ct)
    {
        var text = await Commands.RunAsync(["ip", "netns", "exec", ns, "nft", "list", "chain", "netdev", table, chain], ct: ct);
        var rules = new List<string>();
        var inChain = false;
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.Trim();
            if (line.StartsWith($"chain {chain} {{", StringComparison.Ordinal)) { inChain = true; continue; }
            if (!inChain) continue;
            if (line == "}") break;
            if (line.Length == 0 || line.StartsWith("type ", StringComparison.Ordinal)) continue;
            rules.Add(line);
        }
        return rules;
    }

    /// <summary>The nft script that puts variant <paramref name="name"/> in place.</summary>
    public static string Script(string name, Listed listed)
    {
        var group = listed.GroupRules.ToList();
        var ingress = listed.IngressRules.ToList();
        int pinned = ingress.FindIndex(r => r.Contains("\"merlin: pinned IPv4 flow\"", StringComparison.Ordinal));
        switch (name)
        {
            case "relisted":
                break;
            case "norefresh":
                ingress[Pinned(pinned)] = UpdateClause().Replace(ingress[pinned], " ", 1);
                break;
            case "sampled16":
                ingress.Insert(Pinned(pinned), "numgen random mod 16 != 0 " + UpdateClause().Replace(ingress[pinned], " ", 1));
                break;
            case "nopin":
                group.RemoveAll(r => r.Contains("@flows4", StringComparison.Ordinal));
                ingress.RemoveAll(r => r.Contains("@flows4", StringComparison.Ordinal));
                break;
            case "pinlast":
                // The same rule, without its own-MAC match, first in the service's chain.
                group.Insert(0, listed.OwnMatch().Replace(ingress[Pinned(pinned)], "", 1));
                ingress.RemoveAt(pinned);
                break;
            case "novmap":
                ingress.Insert(0, $"{listed.ServiceMatch} jump {listed.GroupChain}");
                break;
            case "sized":
                return Write(listed, group, ingress, sized: true);
            case "inline":
                ingress.InsertRange(0, group.Select(r => $"{listed.ServiceMatch} {r}"));
                break;
            default:
                throw new ArgumentException($"unknown rule variant '{name}'; known: {string.Join(", ", Known.Keys)}", nameof(name));
        }
        return Write(listed, group, ingress);

        static int Pinned(int index) => index >= 0 ? index : throw new InvalidOperationException("the group chain has no pinned-flow rule");
    }

    /// <summary>The nft script that writes Merlin's listed rules back.</summary>
    public static string Restore(Listed listed) => Write(listed, listed.GroupRules, listed.IngressRules, sized: false);

    private static string Write(Listed listed, IReadOnlyList<string> group, IReadOnlyList<string> ingress, bool sized = false)
    {
        var script = new StringBuilder();
        script.Append($"flush chain netdev {listed.Table} ingress\n");
        script.Append($"flush chain netdev {listed.Table} {listed.GroupChain}\n");
        // The sets are declared again every time (with a size or as listed), so "sized" is undone by any restore.
        foreach (var set in listed.Sets)
        {
            var header = SetHeader().Match(set);
            script.Append($"delete {header.Groups[1].Value} netdev {listed.Table} {header.Groups[2].Value}\n");
            script.Append(sized ? TypeLine().Replace(set, "$0\n\t\tsize 4096", 1) : set).Append('\n');
        }
        foreach (var rule in ingress) script.Append($"add rule netdev {listed.Table} ingress {rule}\n");
        foreach (var rule in group) script.Append($"add rule netdev {listed.Table} {listed.GroupChain} {rule}\n");
        return script.ToString();
    }

    [GeneratedRegex(@" update @flows4 \{[^}]*\} ")]
    private static partial Regex UpdateClause();

    [GeneratedRegex(@"\b(set|map) (\S+) \{")]
    private static partial Regex SetHeader();

    [GeneratedRegex(@"^\s*type [^\n]*", RegexOptions.Multiline)]
    private static partial Regex TypeLine();
}
