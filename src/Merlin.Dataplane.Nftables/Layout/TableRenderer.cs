using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// Renders a layout's planned groups into nftables tables: the DSR netdev table (ingress chain,
/// dispatch maps, a Maglev map and chain per group) and the NAT inet table, and each
/// group's map slots from its Maglev table or its stored minimal-disruption table.
/// </summary>
internal static class TableRenderer
{
    public static NftTable DsrTable(List<LayoutBuilder.ServicePlan> plans, Dictionary<string, string> groups, Dictionary<string, GroupContent> contents,
        SetContent state, List<(LayoutBuilder.ServicePlan Plan, (string Key, string Element) Element)> dispatch,
        IReadOnlyDictionary<(string, string), NftChain>? chainsBefore, Dictionary<(string, string), NftChain> chainsNow, PhysicalAddress? ownMac, NftablesOptions options)
    {
        var sets = new Dictionary<string, NftSet>
        {
            [LayoutBuilder.StateSet] = new(LayoutBuilder.StateSet, "set", "type mark;", state),
        };
        var chains = new Dictionary<string, NftChain>();
        if (plans.Count > 0)
        {
            var own = StateRecords.MacText(ownMac!);
            var iface = options.Interface!;
            var seed = LayoutBuilder.Seed(options);
            var timeout = ((long)options.FlowTimeout.TotalSeconds).ToString(CultureInfo.InvariantCulture);
            var maxFlows = options.MaxPinnedFlows.ToString(CultureInfo.InvariantCulture);
            sets["flows4"] = new("flows4", "map", $"type ipv4_addr . ipv4_addr . inet_service . inet_service : ether_addr; size {maxFlows}; flags dynamic,timeout; timeout {timeout}s;", SetContent.Empty, Dynamic: true);
            sets["flows6"] = new("flows6", "map", $"typeof numgen inc mod 2 . th sport . th dport : ether daddr; size {maxFlows}; flags dynamic,timeout; timeout {timeout}s;", SetContent.Empty, Dynamic: true);
            sets["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, true, IpFamily.V4));
            sets["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, true, IpFamily.V6));
            // A pinned flow is found before the dispatch map: one lookup for its pin, one to refresh it. Only new
            // flows go on to their service's chain. A pin is not checked against its service's servers here (that
            // lookup was ~0.09 of the minimal rule's cost a packet): the dataplane deletes the pins of a server that
            // left right after the change (PinSweep). The dispatch rules ask whether the frame was sent to this node
            // (meta pkttype host: set on receipt, untouched by a rewrite), not what its destination now reads.
            chains["ingress"] = new("ingress", $"type filter hook ingress device \"{iface}\" priority 0; policy accept;",
            [
                $"ether daddr {own} {PinnedRule(false, own, iface, seed)} comment \"merlin: pinned IPv4 flow\"",
                $"ether daddr {own} {PinnedRule(true, own, iface, seed)} comment \"merlin: pinned IPv6 flow\"",
                $"meta pkttype host ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
                $"meta pkttype host ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            ]);
            foreach (var group in plans.GroupBy(p => groups[p.ContentKey]))
            {
                var plan = group.First();
                var name = group.Key;
                sets[name] = new(name, "map", Declarations.Dsr(plan.Size), contents[plan.ContentKey].Map);
                foreach (var variant in group.Select(p => p.Variant).Distinct())
                {
                    var chain = $"{name}_{variant}";
                    if (chainsBefore is null || !chainsBefore.TryGetValue((chain, plan.Shape), out var made))
                        made = new(chain, null, DsrRules(name, plan.Size, variant, own, iface, seed));
                    chains[chain] = chainsNow[(chain, plan.Shape)] = made;
                }
            }
        }
        return new NftTable("netdev", options.DsrTable, sets, chains);
    }

    /// <summary>The flow key: exact for IPv4; for IPv6 the address pair is folded by a hash, because nft 1.0.6 cannot write a dynamic map update whose key is longer than 16 bytes.</summary>
    private static string FlowKey(bool v6, string seed) =>
        v6 ? $"jhash ip6 saddr . ip6 daddr mod {LayoutBuilder.FullRange.ToString(CultureInfo.InvariantCulture)} seed {seed} . th sport . th dport" : "ip saddr . ip daddr . th sport . th dport";

    /// <summary>The ingress rule that forwards a pinned flow's packet to its pinned server and refreshes the pin.</summary>
    private static string PinnedRule(bool v6, string own, string iface, string seed)
    {
        string flow = FlowKey(v6, seed);
        string flows = v6 ? "flows6" : "flows4";
        return $"ether daddr set {flow} map @{flows} update @{flows} {{ {flow} : ether daddr }} ether saddr set {own} fwd to \"{iface}\"";
    }

    private static List<string> DsrRules(string group, int size, string variant, string own, string iface, string seed)
    {
        bool v6 = variant[0] == '6';
        bool saddrOnly = variant[1] == 's';
        bool pinned = !variant.EndsWith('u');
        string ip = v6 ? "ip6" : "ip";
        string m = size.ToString(CultureInfo.InvariantCulture);
        string hash = saddrOnly ? $"jhash {ip} saddr mod {m} seed {seed}" : $"jhash {ip} saddr . th sport mod {m} seed {seed}";
        string flow = FlowKey(v6, seed);
        string flows = v6 ? "flows6" : "flows4";
        string forward = $"ether saddr set {own} fwd to \"{iface}\"";
        var rules = new List<string>();
        if (pinned)
        {
            // Pinned flows never get here (the ingress chain forwards them): a flow is new, or its pin was deleted.
            rules.Add($"ether daddr set {hash} map @{group} update @{flows} {{ {flow} : ether daddr }} {forward} comment \"merlin: new flow\"");
            rules.Add($"ether daddr set {hash} map @{group} {forward} comment \"merlin: new flow, flow map full\"");
        }
        else
        {
            rules.Add($"ether daddr set {hash} map @{group} {forward} comment \"merlin: one-packet scheduling\"");
        }
        rules.Add($"ether daddr set {own} comment \"merlin: no real server, local delivery\"");
        return rules;
    }

    public static NftTable NatTable(List<LayoutBuilder.ServicePlan> plans, Dictionary<string, string> groups, Dictionary<string, GroupContent> contents,
        List<(LayoutBuilder.ServicePlan Plan, (string Key, string Element) Element)> dispatch,
        IReadOnlyDictionary<(string, string), NftChain>? chainsBefore, Dictionary<(string, string), NftChain> chainsNow, NftablesOptions options)
    {
        var seed = LayoutBuilder.Seed(options);
        var sets = new Dictionary<string, NftSet>
        {
            ["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, false, IpFamily.V4)),
            ["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, false, IpFamily.V6)),
        };
        var chains = new Dictionary<string, NftChain>
        {
            ["prerouting"] = new("prerouting", "type nat hook prerouting priority dstnat; policy accept;",
            [
                "ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
                "ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            ]),
        };
        foreach (var group in plans.GroupBy(p => groups[p.ContentKey]))
        {
            var plan = group.First();
            var name = group.Key;
            string ip = plan.Key.Family == IpFamily.V6 ? "ip6" : "ip";
            string m = plan.Size.ToString(CultureInfo.InvariantCulture);
            sets[name] = new(name, "map", $"typeof numgen inc mod {m} : {ip} daddr . th dport; size {m};", contents[plan.ContentKey].Map);
            foreach (var variant in group.Select(p => p.Variant).Distinct())
            {
                string hash = variant == "s" ? $"jhash {ip} saddr mod {m} seed {seed}" : $"jhash {ip} saddr . th sport mod {m} seed {seed}";
                var chain = $"{name}_{variant}";
                if (chainsBefore is null || !chainsBefore.TryGetValue((chain, plan.Shape), out var made))
                    made = new(chain, null,
                    [
                        $"meta l4proto {{ tcp, udp, sctp }} dnat {ip} to {hash} map @{name} comment \"merlin: new connection\"",
                    ]);
                chains[chain] = chainsNow[(chain, plan.Shape)] = made;
            }
        }
        return new NftTable("inet", options.NatTable, sets, chains);
    }

    private static SetContent Dispatch(List<(LayoutBuilder.ServicePlan Plan, (string Key, string Element) Element)> dispatch, bool dsr, IpFamily family) =>
        KeyedContent.Of(dispatch.Where(d => d.Plan.Dsr == dsr && d.Plan.Key.Family == family).Select(d => d.Element));

    /// <summary>The declaration of a DSR Maglev map of <paramref name="size"/> slots.</summary>
    internal static string DsrDeclaration(int size) => Declarations.Dsr(size);

    /// <summary>Map declarations by size: a layout of a thousand maps has a handful of sizes.</summary>
    private static class Declarations
    {
        private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, string> ByDsrSize = new();

        public static string Dsr(int size) => ByDsrSize.GetOrAdd(size, m => $"typeof numgen inc mod {m} : ether daddr; size {m};");
    }

    public static string DispatchKey(ServiceKey key) =>
        $"{key.Address} . {key.Protocol.ToString().ToLowerInvariant()} . {key.Port.ToString(CultureInfo.InvariantCulture)}";

    public static SetContent Slots(LayoutBuilder.ServicePlan plan)
    {
        if (plan.Table is { } stored) return StoredSlots(plan, stored);
        var active = plan.Backends.Where(b => b.Weight > 0).ToList();
        var values = active.ConvertAll(b => b.Value).ToArray();
        // Built into a pooled buffer, kept as owner indices: a fresh table or a string per slot at M = 131,071
        // lands on the large-object heap and costs gen-2 collections; the output bytes are the same (a property
        // test says so).
        var rented = ArrayPool<int>.Shared.Rent(plan.Size);
        try
        {
            var table = rented.AsSpan(0, plan.Size);
            if (active.Count == 0) table.Fill(-1);
            else MaglevTable.Build(active.Select(b => (b.Id, b.Weight)).ToList(), table);
            return new SlotContent(table, values);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// The map from a stored table: each slot to its owner's value (MAC for DSR, address . port for NAT). A slot
    /// whose owner this node cannot use — weight 0 here (health check down), MAC unknown, no longer a server —
    /// takes the owner of the next slot it can use, so nodes that agree on those program the same map.
    /// </summary>
    private static SetContent StoredSlots(LayoutBuilder.ServicePlan plan, MinimalDisruptionTable table)
    {
        var byId = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var b in plan.Backends)
            if (b.Weight > 0) byId[b.Id] = b.Value;
        var owners = new string?[table.Servers.Count];
        for (int i = 0; i < owners.Length; i++)
        {
            var id = table.Servers[i].Id;
            // DSR backends are named by address (one server per address); the table by endpoint.
            if (plan.Dsr && Endpoints.TryParse(id, out var address, out _, out _)) id = address.ToString();
            owners[i] = byId.GetValueOrDefault(id);
        }
        // Each slot's owner in the table, then each gap filled backwards from the next usable slot, wrapping.
        var slots = table.Owners;
        var rented = ArrayPool<int>.Shared.Rent(table.Size);
        try
        {
            var filled = rented.AsSpan(0, table.Size);
            int last = -1;
            for (int s = 0; s < filled.Length; s++)
            {
                filled[s] = slots[s] >= 0 && owners[slots[s]] is not null ? slots[s] : -1;
                if (filled[s] >= 0) last = s;
            }
            if (last >= 0)
            {
                int next = filled[last];
                for (int k = 0; k < filled.Length; k++)
                {
                    int s = (last - k + filled.Length) % filled.Length;
                    if (filled[s] >= 0) next = filled[s];
                    else filled[s] = next;
                }
            }
            return new SlotContent(filled, owners);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(rented);
        }
    }
}
