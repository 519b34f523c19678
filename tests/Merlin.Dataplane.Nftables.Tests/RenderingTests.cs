using System.Net;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Hashing;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

public class RenderingTests
{
    [Fact]
    public void Full_DsrService_IsOneTableWithDispatchMaglevMapLiveSetAndPinnedChain()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)));

        var script = ScriptRenderer.Full(Build(state).Ruleset);

        Assert.Equal(Golden.Lines(
            "add table netdev merlin",
            "add chain netdev merlin ingress { type filter hook ingress device \"eth0\" priority 0; policy accept; }",
            "add chain netdev merlin d1_4p",
            "add map netdev merlin d1 { typeof numgen inc mod 251 : ether daddr; size 251; }",
            "add element netdev merlin d1 { 251 elements }",
            "add map netdev merlin flows4 { type ipv4_addr . ipv4_addr . inet_service . inet_service : ether_addr; size 262144; flags dynamic,timeout; timeout 300s; }",
            "add map netdev merlin flows6 { typeof numgen inc mod 2 . th sport . th dport : ether daddr; size 262144; flags dynamic,timeout; timeout 300s; }",
            $"add set netdev merlin marker {{ type mark; comment \"merlin v2 {Build(state).Ruleset.Fingerprint("marker")}\"; }}",
            "add set netdev merlin state { type mark; }",
            // One record per service (naming its server list), per server list, per real server.
            "add element netdev merlin state { 1024 comment \"l 4 2,3\", 256 comment \"s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1 4\", 512 comment \"r 2 198.18.1.11 80 1 1 0 0 0 0 0 02:00:c6:12:01:0b\", 768 comment \"r 3 198.18.1.12 80 1 1 0 0 0 0 0 02:00:c6:12:01:0c\" }",
            "add map netdev merlin svc4 { type ipv4_addr . inet_proto . inet_service : verdict; }",
            "add element netdev merlin svc4 { 198.18.0.10 . tcp . 80 : goto d1_4p }",
            "add map netdev merlin svc6 { type ipv6_addr . inet_proto . inet_service : verdict; }",
            // A pinned flow is forwarded on its pin alone, before the dispatch map; new flows go on to their service's chain.
            "add rule netdev merlin ingress ether daddr 02:00:00:00:00:aa ether daddr set ip saddr . ip daddr . th sport . th dport map @flows4 update @flows4 { ip saddr . ip daddr . th sport . th dport : ether daddr } ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: pinned IPv4 flow\"",
            "add rule netdev merlin ingress ether daddr 02:00:00:00:00:aa ether daddr set jhash ip6 saddr . ip6 daddr mod 4294967295 seed 0x5eed1234 . th sport . th dport map @flows6 update @flows6 { jhash ip6 saddr . ip6 daddr mod 4294967295 seed 0x5eed1234 . th sport . th dport : ether daddr } ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: pinned IPv6 flow\"",
            "add rule netdev merlin ingress meta pkttype host ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
            "add rule netdev merlin ingress meta pkttype host ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            "add rule netdev merlin d1_4p ether daddr set jhash ip saddr . th sport mod 251 seed 0x5eed1234 map @d1 update @flows4 { ip saddr . ip daddr . th sport . th dport : ether daddr } ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: new flow\"",
            "add rule netdev merlin d1_4p ether daddr set jhash ip saddr . th sport mod 251 seed 0x5eed1234 map @d1 ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: new flow, flow map full\"",
            "add rule netdev merlin d1_4p ether daddr set 02:00:00:00:00:aa comment \"merlin: no real server, local delivery\""),
            Golden.Shape(script));
    }

    [Fact]
    public void Full_NatIpv6Service_IsAnInetTableWithDnatThroughTheMaglevMap()
    {
        var state = State(Service(Tcp("2001:db8::20", 443), Masq("2001:db8:1::11", 8443), Masq("2001:db8:1::12", 8443)));

        var nat = ScriptRenderer.Full(Build(state).Ruleset).Split('\n').Where(l => l.Contains("merlin_nat")).ToArray();

        Assert.Equal(Golden.Lines(
            "add table inet merlin_nat",
            "add chain inet merlin_nat prerouting { type nat hook prerouting priority dstnat; policy accept; }",
            "add chain inet merlin_nat n1_p",
            "add map inet merlin_nat n1 { typeof numgen inc mod 251 : ip6 daddr . th dport; size 251; }",
            "add element inet merlin_nat n1 { 251 elements }",
            "add map inet merlin_nat svc4 { type ipv4_addr . inet_proto . inet_service : verdict; }",
            "add map inet merlin_nat svc6 { type ipv6_addr . inet_proto . inet_service : verdict; }",
            "add element inet merlin_nat svc6 { 2001:db8::20 . tcp . 443 : goto n1_p }",
            "add rule inet merlin_nat prerouting ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
            "add rule inet merlin_nat prerouting ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            "add rule inet merlin_nat n1_p meta l4proto { tcp, udp, sctp } dnat ip6 to jhash ip6 saddr . th sport mod 251 seed 0x5eed1234 map @n1 comment \"merlin: new connection\""),
            Golden.Shape(string.Join("\n", nat)));
        // The NAT map holds address . port of the real servers.
        Assert.Contains("0 : 2001:db8:1::1", nat.Single(l => l.StartsWith("add element inet merlin_nat n1 ", StringComparison.Ordinal)));
    }

    [Fact]
    public void Full_Ipv6DsrSourceHash_HashesTheAddressPairIntoTheFlowKey()
    {
        var state = State(Service(Udp("2001:db8::10", 53), Config("sh"), Route("2001:db8::11", 53), Route("2001:db8::12", 53)));

        var rules = ScriptRenderer.Full(Build(state).Ruleset).Split('\n').Where(l => l.StartsWith("add rule netdev merlin d1_", StringComparison.Ordinal)).ToArray();

        Assert.Equal(Golden.Lines(
            "add rule netdev merlin d1_6s ether daddr set jhash ip6 saddr mod 251 seed 0x5eed1234 map @d1 update @flows6 { jhash ip6 saddr . ip6 daddr mod 4294967295 seed 0x5eed1234 . th sport . th dport : ether daddr } ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: new flow\"",
            "add rule netdev merlin d1_6s ether daddr set jhash ip6 saddr mod 251 seed 0x5eed1234 map @d1 ether saddr set 02:00:00:00:00:aa fwd to \"eth0\" comment \"merlin: new flow, flow map full\"",
            "add rule netdev merlin d1_6s ether daddr set 02:00:00:00:00:aa comment \"merlin: no real server, local delivery\""),
            string.Join("\n", rules));
    }

    [Theory]
    [InlineData("wrr", SchedulerFlags.None, 0u, false, "d1_4p")]
    [InlineData("sh", SchedulerFlags.None, 0u, false, "d1_4s")]            // source hash: the client address alone
    [InlineData("sh", SchedulerFlags.Flag2, 0u, false, "d1_4p")]           // sh-port: address and port
    [InlineData("mh", SchedulerFlags.None, 0u, false, "d1_4s")]
    [InlineData("mh", SchedulerFlags.Flag2, 0u, false, "d1_4p")]           // mh-port
    [InlineData("rr", SchedulerFlags.None, 300u, false, "d1_4s")]          // persistence is per client address
    [InlineData("wrr", SchedulerFlags.None, 0u, true, "d1_4pu")]           // one-packet: no pinning
    public void HashVariant_FollowsSchedulerFlagsPersistenceAndOnePacket(string scheduler, SchedulerFlags flags, uint persistence, bool onePacket, string chain)
    {
        var state = State(Service(Udp("198.18.0.10", 53), Config(scheduler, flags, persistence, onePacket), Route("198.18.1.11", 53)));

        var ruleset = Build(state).Ruleset;

        var table = ruleset.Table("netdev", "merlin")!;
        Assert.Equal(["d1_" + chain[3..], "ingress"], table.Chains.Keys.Order(StringComparer.Ordinal));
        Assert.Contains($"goto {chain}", table.Sets["svc4"].Content.Elements().Single().Element);
        if (onePacket) Assert.DoesNotContain(table.Chains[chain].Rules, r => r.Contains("@flows4", StringComparison.Ordinal));
    }

    [Fact]
    public void ANewIpv6Group_KeepsTheFlowMap_SoNoPinIsDropped()
    {
        var one = Service(Tcp("2001:db8::10", 80), Route("2001:db8:1::11", 80), Route("2001:db8:1::12", 80));
        var first = Build(State(one));

        var script = ScriptRenderer.Diff(first.Ruleset, Build(State(one, Service(Udp("2001:db8::20", 53), Config("sh"), Route("2001:db8:1::13", 53))), first.Assignment).Ruleset);

        Assert.Contains("add chain netdev merlin d2_6s", script);
        Assert.DoesNotContain("map netdev merlin flows6", script);   // neither deleted nor declared again
        Assert.DoesNotContain("flush chain netdev merlin ingress", script);
    }

    [Fact]
    public void SameServerSet_SharesOneMapAndOneChain()
    {
        // The ingress case: every VIP:port goes to the same ingress nodes.
        var state = State(
            Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)),
            Service(Tcp("198.18.0.10", 443), Route("198.18.1.11", 443), Route("198.18.1.12", 443)),
            Service(Tcp("198.18.0.11", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)),
            Service(Tcp("198.18.0.12", 80), Route("198.18.1.13", 80)));

        var table = Build(state).Ruleset.Table("netdev", "merlin")!;

        Assert.Equal(["d1", "d2", "flows4", "flows6", "marker", "state", "svc4", "svc6"], table.Sets.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(["d1_4p", "d2_4p", "ingress"], table.Chains.Keys.Order(StringComparer.Ordinal));
        Assert.Equal([
            "198.18.0.10 . tcp . 443 : goto d1_4p",
            "198.18.0.10 . tcp . 80 : goto d1_4p",
            "198.18.0.11 . tcp . 80 : goto d1_4p",
            "198.18.0.12 . tcp . 80 : goto d2_4p"], table.Sets["svc4"].Content.Elements().Select(e => e.Element));
    }

    [Fact]
    public void MaglevMap_IsTheMaglevTableOfTheServersWithWeight_SizedToTheServerCount()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80, 3), Route("198.18.1.12", 80, 1), Route("198.18.1.13", 80, 0)));

        var map = Build(state).Ruleset.Table("netdev", "merlin")!.Sets["d1"];

        var expected = MaglevTable.Build([("198.18.1.11", 3u), ("198.18.1.12", 1u)], 509);   // three servers configured: M = 509 > 100·3
        Assert.Equal("typeof numgen inc mod 509 : ether daddr; size 509;", map.Declaration);
        Assert.Equal(509, map.Content.Count);
        var macs = new[] { "02:00:c6:12:01:0b", "02:00:c6:12:01:0c" };
        Assert.Equal(expected.Select((owner, slot) => $"{slot} : {macs[owner]}"), map.Content.Elements().Select(e => e.Element));
        // The drained server holds no slot but flows pinned to it may stay, so they keep going there.
        Assert.Equal(["02:00:c6:12:01:0b", "02:00:c6:12:01:0c", "02:00:c6:12:01:0d"], Assert.Single(Build(state).Pinned).Macs.Elements().Select(e => e.Key));
    }

    [Fact]
    public void NoChange_RendersNothing()
    {
        var state = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)),
            Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 8080)));
        var first = Build(state);

        var again = Build(state, first.Assignment);

        Assert.Equal("", ScriptRenderer.Diff(first.Ruleset, again.Ruleset));
    }

    [Fact]
    public void UnchangedGroup_ReusesItsElements_WithoutBuildingTheTableAgain()
    {
        var a = Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80));
        var b = Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80));
        var first = Build(State(a, b));

        var second = Build(State(a, Service(b.Key, Route("198.18.1.13", 80, 2))), first.Assignment);

        var before = first.Ruleset.Table("netdev", "merlin")!.Sets;
        var after = second.Ruleset.Table("netdev", "merlin")!.Sets;
        Assert.Same(before["d1"].Content, after["d1"].Content);
        Assert.NotSame(before["d2"].Content, after["d2"].Content);
        // The unchanged service's servers are the same instance, so the pin sweep skips it without comparing them.
        Assert.Same(first.Pinned[0].Macs, second.Pinned[0].Macs);
        // The changed one has the same servers with the same MACs: nobody left, no pin to sweep.
        Assert.Equal(first.Pinned[1].Macs.Elements(), second.Pinned[1].Macs.Elements());
        Assert.False(PinSweep.Departed(first.Pinned, second.Pinned));
    }

    [Fact]
    public void WeightChange_InASharedGroup_RewritesOnlyTheChangedSlotsAndRecords()
    {
        var before = State(
            Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80)),
            Service(Tcp("198.18.0.10", 443), Route("198.18.1.11", 443), Route("198.18.1.12", 443), Route("198.18.1.13", 443)));
        var after = State(
            Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80, 2), Route("198.18.1.13", 80)),
            Service(Tcp("198.18.0.10", 443), Route("198.18.1.11", 443), Route("198.18.1.12", 443, 2), Route("198.18.1.13", 443)));
        var first = Build(before);
        var second = Build(after, first.Assignment);

        var script = ScriptRenderer.Diff(first.Ruleset, second.Ruleset).TrimEnd('\n').Split('\n');

        // The map keeps its name and size; only slots that changed owner are deleted and added, in one transaction.
        var deleted = Slots(script.Single(l => l.StartsWith("delete element netdev merlin d1 ", StringComparison.Ordinal)));
        var added = Slots(script.Single(l => l.StartsWith("add element netdev merlin d1 ", StringComparison.Ordinal)));
        Assert.Equal(deleted, added);
        var old = MaglevTable.Build([("198.18.1.11", 1u), ("198.18.1.12", 1u), ("198.18.1.13", 1u)], 509);
        var now = MaglevTable.Build([("198.18.1.11", 1u), ("198.18.1.12", 2u), ("198.18.1.13", 1u)], 509);
        Assert.Equal(Enumerable.Range(0, 509).Where(i => old[i] != now[i]), deleted);
        Assert.InRange(deleted.Count, 1, 509 / 2);
        Assert.Equal([
            "delete element netdev merlin d1",
            "delete element netdev merlin state",
            "delete set netdev merlin marker",
            "add set netdev merlin marker",
            "add element netdev merlin d1",
            "add element netdev merlin state"], script.Select(Command));
        // Two server records changed (the weight of .12 in each service), nothing else.
        Assert.Equal(2, script.Single(l => l.StartsWith("delete element netdev merlin state ", StringComparison.Ordinal)).Split(',').Length);
    }

    [Fact]
    public void Drain_MovesOnlyTheDrainedServersSlots_AndKeepsItsPins()
    {
        var before = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80)));
        var after = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80, 0), Route("198.18.1.13", 80)));
        var first = Build(before);
        var second = Build(after, first.Assignment);

        var map1 = first.Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements().ToDictionary(e => e.Key, e => e.Element);
        var map2 = second.Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements().ToDictionary(e => e.Key, e => e.Element);
        var moved = map1.Keys.Where(k => map1[k] != map2[k]).ToList();

        // Every slot of .12 moves; Maglev moves a few others too (the paper's small extra disruption).
        var drained = map1.Keys.Where(k => map1[k].EndsWith("02:00:c6:12:01:0c", StringComparison.Ordinal)).ToList();
        Assert.Subset(moved.ToHashSet(), drained.ToHashSet());
        Assert.InRange(moved.Count - drained.Count, 0, 509 / 50);
        Assert.DoesNotContain(map2.Values, v => v.EndsWith("02:00:c6:12:01:0c", StringComparison.Ordinal));
        var script = ScriptRenderer.Diff(first.Ruleset, second.Ruleset);
        Assert.DoesNotContain("chain", script);
        Assert.False(PinSweep.Departed(first.Pinned, second.Pinned));
    }

    [Fact]
    public void ServerCountCrossingASize_MakesANewMapAndRetiresTheOld_InOneSafeOrder()
    {
        var before = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)));
        var after = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80)));
        var first = Build(before);
        var second = Build(after, first.Assignment);

        var script = Golden.Shape(ScriptRenderer.Diff(first.Ruleset, second.Ruleset)).Split('\n');

        // M goes from 251 to 509: a map's size cannot change, so the group gets a new map (d2);
        // the dispatch entry moves first, then the old chain and maps go.
        Assert.Equal([
            "delete element netdev merlin state { 1024, 256 }",   // the server list (one more) and the service record (another group)
            "delete element netdev merlin svc4 { 198.18.0.10 . tcp . 80 }",
            "flush chain netdev merlin d1_4p",
            "delete map netdev merlin d1",
            "delete set netdev merlin marker",
            "delete chain netdev merlin d1_4p",
            "add chain netdev merlin d2_4p",
            "add map netdev merlin d2 { typeof numgen inc mod 509 : ether daddr; size 509; }",
            "add element netdev merlin d2 { 509 elements }"],
            script.Take(9));
        Assert.Contains("add element netdev merlin svc4 { 198.18.0.10 . tcp . 80 : goto d2_4p }", script);
        Assert.Contains(script, l => l.StartsWith("add rule netdev merlin d2_4p ", StringComparison.Ordinal));
    }

    [Fact]
    public void LastServiceRemoved_DeletesOurTables()
    {
        var first = Build(State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80)), Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 80))));

        var script = ScriptRenderer.Diff(first.Ruleset, Build(State(), first.Assignment).Ruleset);

        Assert.Equal("delete table netdev merlin\ndelete table inet merlin_nat\n", script);
    }

    [Fact]
    public void Rewrite_FlushesAndDeletesWhatIsThere_KeepingFlowMapsThatStillFit()
    {
        var layout = Build(State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80))));
        var existing = new List<Kernel.KernelTable>
        {
            new("netdev", "merlin", 7, 0,
                [new("ingress", 1, "filter", 0, 0, "eth0", 1, []), new("d1_4p", 2, null, null, null, null, null, []), new("stray", 3, null, null, null, null, null, [])],
                [new("flows4", 4, 0x38, 16, 6, 262144, 300_000, null), new("flows6", 5, 0x38, 12, 6, 1000, 300_000, null),
                 new("d1", 6, 0x8, 4, 6, 251, 0, null), new("svc4", 7, 0x8, 12, 16, 0, 0, null), new("marker", 8, 0, 4, 0, 0, 0, "merlin v2 x")]),
            new("inet", "merlin_nat", 8, 0, [], []),
        };

        var script = ScriptRenderer.Rewrite(existing, layout.Ruleset).Split('\n');

        Assert.Equal([
            "delete table inet merlin_nat",
            "flush chain netdev merlin ingress",
            "flush chain netdev merlin d1_4p",
            "flush chain netdev merlin stray",
            "delete map netdev merlin flows6",       // declared with another size: recreated
            "delete map netdev merlin d1",
            "delete map netdev merlin svc4",
            "delete set netdev merlin marker",
            "delete chain netdev merlin ingress",
            "delete chain netdev merlin d1_4p",
            "delete chain netdev merlin stray",
            "add table netdev merlin"], script.Take(12));
        Assert.DoesNotContain(script, l => l.Contains("map netdev merlin flows4", StringComparison.Ordinal));   // pinned flows survive
        Assert.Contains(script, l => l.StartsWith("add map netdev merlin flows6 ", StringComparison.Ordinal));
        Assert.Contains(script, l => l.StartsWith("add rule netdev merlin d1_4p ", StringComparison.Ordinal));
    }

    private static string Command(string line) => string.Join(' ', line.Split(' ').Take(5));

    private static List<int> Slots(string line)
    {
        var body = line[(line.IndexOf('{') + 2)..line.LastIndexOf('}')];
        return body.Split(", ").Select(e => int.Parse(e.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture)).Order().ToList();
    }
}
