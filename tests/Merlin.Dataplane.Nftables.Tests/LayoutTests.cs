using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

public class LayoutTests
{
    [Fact]
    public void UnknownMac_KeepsTheServerOutOfTheTable_ReportsIt_AndStillCountsItForM()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80)));
        var macs = MacsFor(state.Values);
        macs.Remove(IPAddress.Parse("198.18.1.13"));

        var layout = Build(state, macs: macs);

        Assert.Equal([IPAddress.Parse("198.18.1.13")], layout.Unresolved);
        var issue = Assert.Single(layout.Issues);
        Assert.Equal(new RealServerKey(IPAddress.Parse("198.18.1.13"), 80), issue.Server);
        Assert.Contains("not known yet", issue.Reason);
        var table = layout.Ruleset.Table("netdev", "merlin")!;
        Assert.StartsWith("typeof numgen inc mod 509 ", table.Sets["d1"].Declaration);   // 3 servers: the same M as every node that knows all MACs
        Assert.DoesNotContain(table.Sets["d1"].Content.Elements(), e => e.Element.EndsWith(":0d", StringComparison.Ordinal));
        Assert.Equal(2, Assert.Single(layout.Pinned).Macs.Count);
        // All three are tracked (resolution requested) and recorded, the unknown one without a MAC.
        Assert.Equal(3, layout.DsrAddresses.Count);
        Assert.Contains(table.Sets["state"].Content.Elements(), e => e.Element.EndsWith("198.18.1.13 80 1 1 0 0 0 0 0 -\"", StringComparison.Ordinal));
    }

    [Fact]
    public void Unsupported_ServicesAndServers_AreReportedAndKeptInTheStateOnly()
    {
        var fwmark = new ServiceState(ServiceKey.ForFirewallMark(7, IpFamily.V4), Config(), new Dictionary<RealServerKey, RealServerConfig>());
        var tunnel = Service(Tcp("198.18.0.11", 80), (new RealServerKey(IPAddress.Parse("198.18.1.11"), 80), new RealServerConfig { Weight = 1, Forward = ForwardMethod.Tunnel }));
        var mixed = Service(Tcp("198.18.0.12", 80), Route("198.18.1.11", 80), Masq("198.18.2.11", 80));
        var state = new Dictionary<ServiceKey, ServiceState> { [fwmark.Key] = fwmark, [tunnel.Key] = tunnel, [mixed.Key] = mixed };

        var layout = Build(state);

        Assert.Equal(3, layout.Issues.Count);
        Assert.Contains(layout.Issues, i => i.Service == fwmark.Key && i.Reason.Contains("firewall-mark"));
        Assert.Contains(layout.Issues, i => i.Service == tunnel.Key && i.Reason.Contains("tunnel"));
        Assert.Contains(layout.Issues, i => i.Service == mixed.Key && i.Reason.Contains("either DSR or NAT"));
        var table = layout.Ruleset.Table("netdev", "merlin")!;
        Assert.Equal(["198.18.0.12 . tcp . 80"], table.Sets["svc4"].Content.Elements().Select(e => e.Key));   // only the mixed one, as DSR
        Assert.Null(layout.Ruleset.Table("inet", "merlin_nat"));
        Assert.Equal(8, table.Sets["state"].Content.Count);   // 3 services, 3 servers, 2 server lists: all recorded
    }

    [Fact]
    public void NoInterface_DsrServicesAreReported_NatStillWorks()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80)), Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 80)));

        var layout = Build(state, options: Options(iface: null));

        Assert.Contains(layout.Issues, i => i.Reason.Contains("--interface"));
        Assert.Equal(["marker", "state"], layout.Ruleset.Table("netdev", "merlin")!.Sets.Keys.Order(StringComparer.Ordinal));
        Assert.NotNull(layout.Ruleset.Table("inet", "merlin_nat"));
    }

    [Fact]
    public void DsrDuplicateAddress_KeepsOneServerPerAddress()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.11", 8080)));

        var layout = Build(state);

        var issue = Assert.Single(layout.Issues);
        Assert.Equal((ushort)8080, issue.Server!.Value.Port);
        Assert.Equal(1, Assert.Single(layout.Pinned).Macs.Count);
    }

    [Fact]
    public void GroupNames_SurviveAChangeOfContent_AndNewGroupsTakeUnusedNames()
    {
        var a = Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80));
        var b = Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80));
        var first = Build(State(a, b));
        Assert.Equal("d1", first.Assignment.ServiceGroups[a.Key]);
        Assert.Equal("d2", first.Assignment.ServiceGroups[b.Key]);

        // b's weight changes: its map is edited in place; a new service with a new set gets d3.
        var b2 = Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80, 5));
        var c = Service(Tcp("198.18.0.12", 80), Route("198.18.1.14", 80));
        var second = Build(State(a, b2, c), first.Assignment);

        Assert.Equal("d1", second.Assignment.ServiceGroups[a.Key]);
        Assert.Equal("d2", second.Assignment.ServiceGroups[b.Key]);
        Assert.Equal("d3", second.Assignment.ServiceGroups[c.Key]);
    }

    [Fact]
    public void OneServiceOfASharedGroupChanging_GetsItsOwnGroup_TheOthersKeepTheirs()
    {
        // What one operation at a time does when a weight changes in all services of a shared set.
        var services = Enumerable.Range(0, 3).Select(i => Service(Tcp("198.18.0.10", (ushort)(80 + i)), Route("198.18.1.11", 80), Route("198.18.1.12", 80))).ToArray();
        var first = Build(State(services));
        var changed = Service(services[0].Key, Route("198.18.1.11", 80), Route("198.18.1.12", 80, 3));

        var second = Build(State(changed, services[1], services[2]), first.Assignment);

        Assert.Equal("d2", second.Assignment.ServiceGroups[changed.Key]);
        Assert.Equal("d1", second.Assignment.ServiceGroups[services[1].Key]);
        var script = ScriptRenderer.Diff(first.Ruleset, second.Ruleset);
        Assert.DoesNotContain("element netdev merlin d1 ", script);   // the shared map is untouched
    }

    [Fact]
    public void StateRecords_RoundTrip_AndRebuildTheSameRuleset()
    {
        var state = State(
            Service(Tcp("198.18.0.10", 80), Config("sh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2, 300, false), Route("198.18.1.11", 80, 4294967295), Route("198.18.1.12", 80, 0)),
            Service(Udp("2001:db8:ffff:ffff:ffff:ffff:ffff:fff0", 65535), Config("mh", onePacket: true),
                (new RealServerKey(IPAddress.Parse("2001:db8:ffff:ffff:ffff:ffff:ffff:fff1"), 65535),
                 new RealServerConfig { Weight = 4294967295, Forward = ForwardMethod.Route, TunnelType = TunnelType.Gue, TunnelPort = 65535, TunnelFlags = TunnelFlags.Csum | TunnelFlags.RemoteCsum, UpperThreshold = 4294967295, LowerThreshold = 4294967294 })),
            Service(Tcp("198.18.0.20", 443), Masq("198.18.2.11", 8443, 7)),
            new ServiceState(ServiceKey.ForFirewallMark(9, IpFamily.V6, Protocol.Sctp), Config("rr"), new Dictionary<RealServerKey, RealServerConfig>()));
        var layout = Build(state);
        var elements = layout.Ruleset.Table("netdev", "merlin")!.Sets["state"].Content.Elements().ToList();
        Assert.Contains(elements, e => e.Element.Length > StateRecords.ChunkLength);   // the long IPv6 record is split

        var decoded = StateRecords.Decode(elements.Select(e => (uint.Parse(e.Key, System.Globalization.CultureInfo.InvariantCulture), Comment(e.Element))));

        Assert.True(new DataplaneState(decoded.Services).SameAs(new DataplaneState(state)));
        Assert.Equal(layout.Assignment.ServiceGroups.OrderBy(kv => kv.Value), decoded.Groups.OrderBy(kv => kv.Value));
        var previous = new Assignment(decoded.Groups, new Dictionary<string, GroupInfo>(), decoded.ServiceIds, decoded.ServerIds) { ListIds = decoded.ListIds };
        var rebuilt = LayoutBuilder.Build(new LayoutInput(decoded.Services, decoded.Macs, OwnMac, previous), Options());
        Assert.Equal(layout.Ruleset.Fingerprint("marker"), rebuilt.Ruleset.Fingerprint("marker"));
        Assert.Equal("", ScriptRenderer.Diff(layout.Ruleset, rebuilt.Ruleset));
    }

    [Fact]
    public void StateRecords_RejectWhatTheyDidNotWrite()
    {
        Assert.Throws<FormatException>(() => StateRecords.Decode([(16, "x whatever")]));
        Assert.Throws<FormatException>(() => StateRecords.Decode([(16, "s 1 tcp 198.18.0.10 80 wrr 0 0 0")]));
        Assert.Throws<FormatException>(() => StateRecords.Decode([(512, "r 2 1 198.18.1.11 80 1 1 0 0 0 0 0 -")]));   // the older per-service format
        Assert.Throws<FormatException>(() => StateRecords.Decode([(256, "s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1 4")]));   // no such server list
        Assert.Throws<FormatException>(() => StateRecords.Decode([(256, "s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1 4"), (1024, "l 4 2,3"), (512, "r 2 198.18.1.11 80 1 1 0 0 0 0 0 -")]));   // no server record 3
        Assert.Throws<FormatException>(() => StateRecords.Decode([(512, "r 3 198.18.1.11 80 1 1 0 0 0 0 0 -")]));   // id and key disagree
    }

    [Fact]
    public void AWeightChangeInEveryServiceOfASharedSet_RewritesOneStateRecordAndTheMovedSlots_Only()
    {
        // The ingress case: 200 services on the same three nodes; one node's weight changes in all of them.
        State200(1, out var before);
        State200(3, out var after);
        var first = Build(before);
        var second = Build(after, first.Assignment);

        var script = ScriptRenderer.Diff(first.Ruleset, second.Ruleset).Split('\n', StringSplitOptions.RemoveEmptyEntries);

        var state = script.Where(l => l.Contains(" merlin state ", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, state.Count);   // delete + add of one element: the server record, under its old id
        Assert.DoesNotContain(",", state[0]);
        Assert.Contains(" 198.18.1.12 80 3 1 ", state[1]);
        Assert.All(script, l => Assert.True(l.Contains(" merlin state ", StringComparison.Ordinal) || l.Contains(" merlin d1 ", StringComparison.Ordinal) || l.Contains(" merlin marker", StringComparison.Ordinal), l));
        Assert.Equal(first.Assignment.ServiceIds, second.Assignment.ServiceIds);
        Assert.Equal(first.Assignment.ListIds, second.Assignment.ListIds);

        static void State200(uint weight, out Dictionary<ServiceKey, ServiceState> state) =>
            state = State(Enumerable.Range(0, 200).Select(i => Service(Tcp($"198.18.0.{10 + i / 100}", (ushort)(80 + i % 100)),
                Route("198.18.1.11", 80), Route("198.18.1.12", 80, weight), Route("198.18.1.13", 80))).ToArray());
    }

    [Fact]
    public void StateRecordIds_StaySmall_HoweverOftenOneServiceOfASharedSetChanges()
    {
        var services = Enumerable.Range(0, 5).Select(i => Service(Tcp("198.18.0.10", (ushort)(80 + i)), Route("198.18.1.11", 80), Route("198.18.1.12", 80))).ToArray();
        var layout = Build(State(services));
        for (int round = 0; round < 40; round++)
        {
            // One service's server flaps between weights: its records split off and join again.
            var changed = Service(services[0].Key, Route("198.18.1.11", 80), Route("198.18.1.12", 80, (uint)(round % 3)));
            layout = Build(State([changed, .. services[1..]]), layout.Assignment);
        }
        var ids = layout.Assignment.ServiceIds.Values.Concat(layout.Assignment.ServerIds.Values).Concat(layout.Assignment.ListIds.Values);
        Assert.InRange(ids.Max(), 1u, 20u);
    }

    [Fact]
    public void Mismatch_FindsMissingForeignAndReorderedObjects()
    {
        var ruleset = Build(State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80)))).Ruleset;
        var table = ruleset.Table("netdev", "merlin")!;
        KernelTable Kernel(Func<List<KernelChain>, List<KernelChain>>? chains = null, Func<List<KernelSet>, List<KernelSet>>? sets = null)
        {
            var c = table.Chains.Values.Select(ch => new KernelChain(ch.Name, 1, ch.Base is null ? null : "filter", ch.Base is null ? null : 0u, ch.Base is null ? null : 0,
                ch.Base is null ? null : "eth0", ch.Base is null ? null : 1u, ch.Rules.Select((r, i) => new KernelRule((ulong)i, TableAuditor.CommentOf(r), "h")).ToList())).ToList();
            var s = table.Sets.Values.Select(st => new KernelSet(st.Name, 1, st.Dynamic ? 0x38u : 0u, 4, 0, st.Dynamic ? 262144u : 0u, st.Dynamic ? 300_000u : 0u,
                st.Name == "marker" ? LayoutBuilder.MarkerComment(ruleset.Fingerprint("marker")) : null)).ToList();
            return new KernelTable("netdev", "merlin", 1, 0, chains?.Invoke(c) ?? c, sets?.Invoke(s) ?? s);
        }

        Assert.Null(TableAuditor.Mismatch([Kernel()], ruleset));
        Assert.Contains("missing", TableAuditor.Mismatch([], ruleset));
        Assert.Contains("d1_4p", TableAuditor.Mismatch([Kernel(chains: c => c.Where(x => x.Name != "d1_4p").ToList())], ruleset));
        Assert.Contains("holds 2 rules", TableAuditor.Mismatch([Kernel(chains: c => c.Select(x => x.Name == "d1_4p" ? x with { Rules = x.Rules.Skip(1).ToList() } : x).ToList())], ruleset));
        Assert.Contains("not ours", TableAuditor.Mismatch([Kernel(chains: c => [.. c, new KernelChain("extra", 9, null, null, null, null, null, [])])], ruleset));
        Assert.Contains("hooks device eth1", TableAuditor.Mismatch([Kernel(chains: c => c.Select(x => x.Name == "ingress" ? x with { Device = "eth1" } : x).ToList())], ruleset));
        Assert.Contains("marker", TableAuditor.Mismatch([Kernel(sets: s => s.Select(x => x.Name == "marker" ? x with { Comment = "merlin v2 0000" } : x).ToList())], ruleset));
        Assert.Contains("flows4", TableAuditor.Mismatch([Kernel(sets: s => s.Select(x => x.Name == "flows4" ? x with { Size = 10 } : x).ToList())], ruleset));
        Assert.Contains("should not exist", TableAuditor.Mismatch([Kernel(), new KernelTable("inet", "merlin_nat", 2, 0, [], [])], ruleset));
    }

    private static string Comment(string element)
    {
        int at = element.IndexOf(" comment \"", StringComparison.Ordinal);
        return element[(at + 10)..^1];
    }
}
