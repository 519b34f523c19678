using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Merlin.Hashing;
using Endpoints = Merlin.Model.Endpoints;

namespace Merlin.Agent;

/// <summary>One md-table service as this real server serves it: its VIP:port, how the load balancers hash its flows, its stored record.</summary>
public sealed record SecondChanceService(string Id, IPAddress Vip, ushort Port, bool SourceAddressOnly, string OwnId, TableRecord Record);

/// <summary>
/// The nftables rules that give a connection a second chance on this real server (docs/architecture.md, "Second
/// chance"). A TCP packet for a served VIP:port that is not a SYN and that conntrack does not know (<c>ct state
/// new</c>: no connection here) is hashed as the load balancers hash it (<c>jhash ip saddr . th sport mod M seed
/// S</c>); if the service's stored record names a previous owner for that slot other than this server, the packet
/// is marked and handed to it — <c>dup to</c> its address (the kernel resolves its MAC; the IP header is
/// untouched, so the VIP stays the destination, as with direct server return) and dropped here. The mark is the
/// IPv4 header's reserved flag bit: a marked packet is never handed on again (no third hop, no loop, whatever the
/// two servers think the table is); the previous owner clears the bit and takes the packet if conntrack knows its
/// connection, else drops it. Named counters count hand-offs made, and hand-offs taken and refused.
/// <para>
/// IPv4 only: IPv6 has no spare header bit, and nft's <c>dup</c> needs an address per family (not built yet).
/// </para>
/// </summary>
public static class SecondChanceRules
{
    public const string Family = "ip";
    public const string Table = "merlin_chance";

    /// <summary>The counter kinds, as named in the table (<c>handed_N</c> …) and in the agent's metrics.</summary>
    public static readonly IReadOnlyList<string> CounterKinds = ["handed", "accepted", "refused"];

    /// <summary>
    /// The whole table as one nft script that replaces whatever table of that name exists (so running it again
    /// changes nothing but the counters, which start again from zero only when the rules changed).
    /// Services that are not IPv4 are left out.
    /// </summary>
    public static string Render(IReadOnlyList<SecondChanceService> services, uint seed)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"table {Family} {Table}\ndelete table {Family} {Table}\ntable {Family} {Table} {{\n");
        var dispatch = new List<string>();
        for (int n = 0; n < services.Count; n++)
        {
            var s = services[n];
            if (s.Vip.AddressFamily != AddressFamily.InterNetwork) continue;
            int m = s.Record.Current.Size;
            foreach (var kind in CounterKinds) text.Append(CultureInfo.InvariantCulture, $"  counter {kind}_{n} {{ comment \"{s.Id}\" }}\n");
            text.Append(CultureInfo.InvariantCulture, $"  map prev_{n} {{\n    typeof numgen inc mod {m} : ip daddr\n");
            var elements = PreviousOwners(s).Select(p => $"{p.Slot.ToString(CultureInfo.InvariantCulture)} : {p.Address}").ToList();
            if (elements.Count > 0) text.Append("    elements = { ").AppendJoin(", ", elements).Append(" }\n");
            text.Append("  }\n");
            string hash = s.SourceAddressOnly
                ? $"jhash ip saddr mod {m} seed 0x{seed:x8}"
                : $"jhash ip saddr . th sport mod {m} seed 0x{seed:x8}";
            text.Append(CultureInfo.InvariantCulture, $"  chain s_{n} {{\n");
            // A hand-off from another server (marked): ours only if conntrack knows its connection; never handed on.
            text.Append(CultureInfo.InvariantCulture, $"    ip frag-off & 0x8000 != 0 ct state new counter name \"refused_{n}\" drop\n");
            text.Append(CultureInfo.InvariantCulture, $"    ip frag-off & 0x8000 != 0 ip frag-off set ip frag-off & 0x7fff counter name \"accepted_{n}\" accept\n");
            // Not a SYN and no connection here: the slot's previous owner may have it.
            text.Append(CultureInfo.InvariantCulture,
                $"    tcp flags & syn == 0 ct state new {hash} @prev_{n} ip frag-off set ip frag-off | 0x8000 counter name \"handed_{n}\" dup to {hash} map @prev_{n} drop\n");
            text.Append("  }\n");
            dispatch.Add($"{s.Vip} . {s.Port.ToString(CultureInfo.InvariantCulture)} : goto s_{n}");
        }
        // After conntrack (priority -200), so ct state answers; before the packet is delivered.
        text.Append("  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n");
        if (dispatch.Count > 0) text.Append("    ip daddr . tcp dport vmap { ").AppendJoin(", ", dispatch).Append(" }\n");
        text.Append("  }\n}\n");
        return text.ToString();
    }

    /// <summary>The script that removes the table (nothing if it is not there).</summary>
    public static string Removal => $"table {Family} {Table}\ndelete table {Family} {Table}\n";

    /// <summary>The slots whose previous owner is another server, with that server's address.</summary>
    public static IEnumerable<(int Slot, IPAddress Address)> PreviousOwners(SecondChanceService service)
    {
        var servers = service.Record.Current.Servers;
        var addresses = new IPAddress?[servers.Count];
        for (int i = 0; i < servers.Count; i++)
            if (servers[i].Id != service.OwnId && Endpoints.TryParse(servers[i].Id, out var address, out _, out _) && address.AddressFamily == service.Vip.AddressFamily)
                addresses[i] = address;
        foreach (var p in service.Record.Previous)
            if (addresses[p.Server] is { } a) yield return (p.Slot, a);
    }
}
