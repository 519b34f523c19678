using System.Net;
using Merlin.Hashing;

namespace Merlin.Agent.Tests;

public class SecondChanceRulesTests
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    /// <summary>rs1 and rs2 over 7 slots, then rs3 joins: the slots it took remember rs1 or rs2.</summary>
    private static TableRecord Joined()
    {
        var before = TableRecord.Of(MinimalDisruptionTable.Build([("198.18.0.11:80", 1), ("198.18.0.12:80", 1)], 7));
        return TableRecord.Next(before, [("198.18.0.11:80", 1), ("198.18.0.12:80", 1), ("198.18.0.13:80", 1)], T0, TimeSpan.FromHours(1), size: 7);
    }

    [Fact]
    public void Render_HandsUnknownNonSynPacketsToTheSlotsPreviousOwner_AndMarksThemSoTheyAreNeverHandedOnAgain()
    {
        var record = Joined();
        var service = new SecondChanceService("web", IPAddress.Parse("198.18.0.100"), 80, SourceAddressOnly: false, OwnId: "198.18.0.13:80", record);
        var previous = SecondChanceRules.PreviousOwners(service).ToList();
        Assert.Equal(record.Previous.Select(p => p.Slot), previous.Select(p => p.Slot));
        var elements = string.Join(", ", previous.Select(p => $"{p.Slot} : {p.Address}"));
        Assert.Equal(
            "table ip merlin_chance\ndelete table ip merlin_chance\ntable ip merlin_chance {\n" +
            "  counter handed_0 { comment \"web\" }\n  counter accepted_0 { comment \"web\" }\n  counter refused_0 { comment \"web\" }\n" +
            "  map prev_0 {\n    typeof numgen inc mod 7 : ip daddr\n" +
            $"    elements = {{ {elements} }}\n  }}\n" +
            "  chain s_0 {\n" +
            "    ip frag-off & 0x8000 != 0 ct state new counter name \"refused_0\" drop\n" +
            "    ip frag-off & 0x8000 != 0 ip frag-off set ip frag-off & 0x7fff counter name \"accepted_0\" accept\n" +
            "    tcp flags & syn == 0 ct state new jhash ip saddr . th sport mod 7 seed 0x5eed1234 @prev_0 ip frag-off set ip frag-off | 0x8000 counter name \"handed_0\" " +
            "dup to jhash ip saddr . th sport mod 7 seed 0x5eed1234 map @prev_0 drop\n" +
            "  }\n" +
            "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n" +
            "    ip daddr . tcp dport vmap { 198.18.0.100 . 80 : goto s_0 }\n  }\n}\n" +
            // No IPv6 service: an IPv6 table left by an earlier pass goes.
            "table ip6 merlin_chance\ndelete table ip6 merlin_chance\n",
            SecondChanceRules.Render([service], 0x5eed1234));
    }

    [Fact]
    public void Render_NeverHandsAPacketToThisServerItself_NorToAnotherFamily()
    {
        var record = Joined();
        // On rs1: the slots rs3 took from rs1 name rs1 itself — nothing to hand on there.
        var onRs1 = new SecondChanceService("web", IPAddress.Parse("198.18.0.100"), 80, false, "198.18.0.11:80", record);
        Assert.All(SecondChanceRules.PreviousOwners(onRs1), p => Assert.Equal(IPAddress.Parse("198.18.0.12"), p.Address));
        // An IPv6 service's previous owners are its IPv6 servers; an IPv4 server in its table has no address to hand to.
        var mixed = TableRecord.Next(TableRecord.Of(MinimalDisruptionTable.Build([("[2001:db8::11]:80", 1), ("198.18.0.12:80", 1)], 7)),
            [("[2001:db8::11]:80", 1), ("198.18.0.12:80", 1), ("[2001:db8::13]:80", 1)], T0, TimeSpan.FromHours(1), size: 7);
        var v6 = new SecondChanceService("web6", IPAddress.Parse("2001:db8::100"), 80, false, "[2001:db8::13]:80", mixed);
        Assert.All(SecondChanceRules.PreviousOwners(v6), p => Assert.Equal(IPAddress.Parse("2001:db8::11"), p.Address));
        Assert.Contains(mixed.Previous, p => mixed.Current.Servers[p.Server].Id == "198.18.0.12:80");
    }

    [Fact]
    public void Render_AnIpv6Service_MarksItsHandOffsWithTheFlowLabel_InTheIp6Table()
    {
        var record = TableRecord.Next(TableRecord.Of(MinimalDisruptionTable.Build([("[2001:db8::11]:80", 1), ("[2001:db8::12]:80", 1)], 7)),
            [("[2001:db8::11]:80", 1), ("[2001:db8::12]:80", 1), ("[2001:db8::13]:80", 1)], T0, TimeSpan.FromHours(1), size: 7);
        var service = new SecondChanceService("web6", IPAddress.Parse("2001:db8::100"), 80, SourceAddressOnly: false, OwnId: "[2001:db8::13]:80", record);
        var elements = string.Join(", ", SecondChanceRules.PreviousOwners(service).Select(p => $"{p.Slot} : {p.Address}"));
        Assert.Equal(
            "table ip merlin_chance\ndelete table ip merlin_chance\ntable ip merlin_chance {\n" +
            "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n  }\n}\n" +
            "table ip6 merlin_chance\ndelete table ip6 merlin_chance\ntable ip6 merlin_chance {\n" +
            "  counter handed_0 { comment \"web6\" }\n  counter accepted_0 { comment \"web6\" }\n  counter refused_0 { comment \"web6\" }\n" +
            "  map prev_0 {\n    typeof numgen inc mod 7 : ip6 daddr\n" +
            $"    elements = {{ {elements} }}\n  }}\n" +
            "  chain s_0 {\n" +
            "    tcp flags & syn == 0 ip6 flowlabel 0x7ffff ct state new counter name \"refused_0\" drop\n" +
            "    tcp flags & syn == 0 ip6 flowlabel 0x7ffff counter name \"accepted_0\" accept\n" +
            "    tcp flags & syn == 0 ct state new jhash ip6 saddr . th sport mod 7 seed 0x5eed1234 @prev_0 ip6 flowlabel set 0x7ffff counter name \"handed_0\" " +
            "dup to jhash ip6 saddr . th sport mod 7 seed 0x5eed1234 map @prev_0 drop\n" +
            "  }\n" +
            "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n" +
            "    ip6 daddr . tcp dport vmap { 2001:db8::100 . 80 : goto s_0 }\n  }\n}\n",
            SecondChanceRules.Render([service], 0x5eed1234));
        Assert.Equal("table ip merlin_chance\ndelete table ip merlin_chance\ntable ip6 merlin_chance\ndelete table ip6 merlin_chance\n", SecondChanceRules.Removal);
    }

    [Fact]
    public void Render_HashesTheSourceAddressAlone_WhenTheLoadBalancersDo()
    {
        var service = new SecondChanceService("web", IPAddress.Parse("198.18.0.100"), 80, SourceAddressOnly: true, "198.18.0.13:80", Joined());
        Assert.Contains("jhash ip saddr mod 7 seed 0x00000001 @prev_0", SecondChanceRules.Render([service], 1));
    }
}
