using System.Text.RegularExpressions;
using Merlin.Daemon;

namespace Merlin.ManPages;

/// <summary>
/// merlin(8). The page lists the flags of <see cref="DaemonCommandLine"/>, which its --help prints, each with its default
/// and meaning from the flag table of docs/operations.md
/// ("Running the daemon"). A flag the table does not describe is an error, so the page and the guide cannot drift apart.
/// </summary>
public static partial class DaemonPage
{
    public static string Render(string operationsGuide, string version, string date)
    {
        var rows = new Dictionary<string, (string Default, string Meaning)>();
        foreach (Match row in TableRow().Matches(operationsGuide))
            foreach (Match flag in FlagName().Matches(row.Groups[1].Value))
                rows.TryAdd(flag.Groups[1].Value, (row.Groups[2].Value.Trim(), row.Groups[3].Value.Trim()));
        var page = new Roff("merlin", 8, version, date)
            .Section("name").Paragraph("merlin - the Merlin load-balancer daemon")
            .Section("synopsis").Example(["merlin [--flag value]...", "merlin --config /etc/merlin/merlin.json", "merlin --version"])
            .Section("description")
            .Paragraph("merlin serves Merlin's gRPC API, keeps the desired virtual services and real servers in a store (embedded SQLite or etcd), and reconciles them into this node's kernel (nftables or IPVS); it runs health checks of the real servers and may announce the VIPs (keepalived's VRRP or BGP through gobgpd).")
            .Paragraph("Every flag can also be set in the environment as MERLIN_<FLAG> with dashes as underscores (MERLIN_STORE_BACKEND=etcd3), or in the JSON file given with --config, whose keys are the flags without their dashes. Precedence: flags, then the environment, then the file. The packaged service reads /etc/merlin/merlin.json.")
            .Section("options");
        foreach (var flag in new DaemonCommandLine().Flags.Select(f => f.Name))
        {
            if (!rows.TryGetValue(flag, out var row))
                throw new InvalidOperationException($"docs/operations.md: the flag table of \"Running the daemon\" does not describe {flag}");
            var meaning = Plain(row.Meaning).TrimEnd('.') + "." + (row.Default is { Length: > 0 } d ? $" Default: {Plain(d)}." : "");
            page.Tagged(Roff.Bold(flag) + (Switch(row.Default) ? "" : " " + Roff.Italic("value")), meaning);
        }
        page.Tagged(Roff.Bold("--version"), "Print the version (release and git commit) and exit.")
            .Tagged(Roff.Bold("--help") + ", " + Roff.Bold("-h"), "List the flags and exit.")
            .Section("exit status")
            .Tagged(Roff.Bold("0"), "Stopped by SIGTERM or SIGINT. The kernel stays programmed.")
            .Tagged(Roff.Bold("1"), "Any other failure: \"merlin: failed:\" and the whole exception on standard error.")
            .Tagged(Roff.Bold("2"), "A flag, a file or directory it names, or a port it names cannot be used: one line naming the flag; nothing was changed.")
            .Section("files")
            .Tagged(Roff.Bold("/etc/merlin/merlin.json"), "The packaged service's settings.")
            .Tagged(Roff.Bold("/var/lib/merlin"), "The SQLite store (merlin.db) and node state: the node lock, owned IPVS services, a node drain, keepalived's and gobgpd's files.")
            .Tagged(Roff.Bold("/run/merlin/merlin.sock"), "The local API socket; its callers are admin (group merlin-admin).")
            .Section("see also").Paragraph("meradm(1), merlin-agent(8), merlin-k8s(8), keepalived(8), gobgpd(8), nft(8); the operations guide, docs/operations.md in Merlin's source.");
        return page.ToString();
    }

    /// <summary>Markdown of a table cell as plain text: code spans and links lose their markup.</summary>
    private static string Plain(string markdown) => Link().Replace(markdown, "$1").Replace("`", "", StringComparison.Ordinal).Replace("**", "", StringComparison.Ordinal);

    /// <summary>A flag that stands alone: its default is on or off.</summary>
    private static bool Switch(string @default) => @default is "off" or "on";

    [GeneratedRegex(@"^\| *(`--[^|]+?) *\| *([^|]*?) *\| *(.+?) *\|$", RegexOptions.Multiline)]
    private static partial Regex TableRow();

    [GeneratedRegex(@"`(--[a-z0-9-]+)`")]
    private static partial Regex FlagName();

    [GeneratedRegex(@"\[([^\]]+)\]\([^)]+\)")]
    private static partial Regex Link();
}
