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
/// untouched, so the VIP stays the destination, as with direct server return) and dropped here. A marked packet
/// is never handed on again (no third hop, no loop, whatever the two servers think the table is); the previous
/// owner takes it if conntrack knows its connection, else drops it. Named counters count hand-offs made, and
/// hand-offs taken and refused.
/// <para>
/// The mark: in IPv4 the header's reserved flag bit, cleared on receipt. IPv6 has no spare bit, so a hand-off
/// carries the flow label <see cref="Ipv6Mark"/>, from the range Linux keeps for its flow-label manager, which
/// automatic labels never take (<c>net.ipv6.flowlabel_state_ranges=1</c>, the default); the label is not part of
/// TCP's checksum. A client that picks that label itself (another OS, one flow in 2^20) loses only the hand-off:
/// a moved flow of it is refused instead of handed. SYNs are never taken for hand-offs. One table per family,
/// <c>ip</c> and <c>ip6 merlin_chance</c>: <c>dup</c> and the header fields are per family.
/// </para>
/// </summary>
public static class SecondChanceRules
{
    public const string Table = "merlin_chance";

    /// <summary>The families the rules are written in, one table each.</summary>
    public static readonly IReadOnlyList<string> Families = ["ip", "ip6"];

    /// <summary>The flow label that marks an IPv6 hand-off.</summary>
    public const uint Ipv6Mark = 0x7ffff;

    /// <summary>The counter kinds, as named in the table (<c>handed_N</c> …) and in the agent's metrics.</summary>
    public static readonly IReadOnlyList<string> CounterKinds = ["handed", "accepted", "refused"];

    /// <summary>
    /// Both tables as one nft script that replaces whatever tables of that name exist (so running it again
    /// changes nothing but the counters, which start again from zero only when the rules changed). The IPv4 table
    /// is always written; the IPv6 one only while an IPv6 service has rules. A service is numbered N by its place in
    /// <paramref name="services"/>, whichever table holds it.
    /// </summary>
    public static string Render(IReadOnlyList<SecondChanceService> services, uint seed)
    {
        var text = new StringBuilder();
        foreach (var family in Families)
        {
            var v6 = family == "ip6";
            text.Append(CultureInfo.InvariantCulture, $"table {family} {Table}\ndelete table {family} {Table}\n");
            var mine = Enumerable.Range(0, services.Count)
                .Where(n => services[n].Vip.AddressFamily == (v6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork)).ToList();
            if (v6 && mine.Count == 0) continue;
            text.Append(CultureInfo.InvariantCulture, $"table {family} {Table} {{\n");
            var dispatch = new List<string>();
            foreach (var n in mine)
            {
                var s = services[n];
                int m = s.Record.Current.Size;
                foreach (var kind in CounterKinds) text.Append(CultureInfo.InvariantCulture, $"  counter {kind}_{n} {{ comment \"{s.Id}\" }}\n");
                text.Append(CultureInfo.InvariantCulture, $"  map prev_{n} {{\n    typeof numgen inc mod {m} : {family} daddr\n");
                var elements = PreviousOwners(s).Select(p => $"{p.Slot.ToString(CultureInfo.InvariantCulture)} : {p.Address}").ToList();
                if (elements.Count > 0) text.Append("    elements = { ").AppendJoin(", ", elements).Append(" }\n");
                text.Append("  }\n");
                string hash = s.SourceAddressOnly
                    ? $"jhash {family} saddr mod {m} seed 0x{seed:x8}"
                    : $"jhash {family} saddr . th sport mod {m} seed 0x{seed:x8}";
                // A hand-off from another server (marked): ours only if conntrack knows its connection; never handed on.
                var (marked, take, mark) = v6
                    ? ($"tcp flags & syn == 0 ip6 flowlabel 0x{Ipv6Mark:x5}", "", $"ip6 flowlabel set 0x{Ipv6Mark:x5}")
                    : ("ip frag-off & 0x8000 != 0", "ip frag-off set ip frag-off & 0x7fff ", "ip frag-off set ip frag-off | 0x8000");
                text.Append(CultureInfo.InvariantCulture, $"  chain s_{n} {{\n");
                text.Append(CultureInfo.InvariantCulture, $"    {marked} ct state new counter name \"refused_{n}\" drop\n");
                text.Append(CultureInfo.InvariantCulture, $"    {marked} {take}counter name \"accepted_{n}\" accept\n");
                // Not a SYN and no connection here: the slot's previous owner may have it.
                text.Append(CultureInfo.InvariantCulture,
                    $"    tcp flags & syn == 0 ct state new {hash} @prev_{n} {mark} counter name \"handed_{n}\" dup to {hash} map @prev_{n} drop\n");
                text.Append("  }\n");
                dispatch.Add($"{s.Vip} . {s.Port.ToString(CultureInfo.InvariantCulture)} : goto s_{n}");
            }
            // After conntrack (priority -200), so ct state answers; before the packet is delivered.
            text.Append("  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n");
            if (dispatch.Count > 0) text.Append(CultureInfo.InvariantCulture, $"    {family} daddr . tcp dport vmap {{ ").AppendJoin(", ", dispatch).Append(" }\n");
            text.Append("  }\n}\n");
        }
        return text.ToString();
    }

    /// <summary>The script that removes both tables (nothing if they are not there).</summary>
    public static string Removal => string.Concat(Families.Select(f => $"table {f} {Table}\ndelete table {f} {Table}\n"));

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
