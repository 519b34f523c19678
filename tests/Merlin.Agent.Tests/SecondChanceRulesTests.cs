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
            "    ip daddr . tcp dport vmap { 198.18.0.100 . 80 : goto s_0 }\n  }\n}\n",
            SecondChanceRules.Render([service], 0x5eed1234));
    }

    [Fact]
    public void Render_NeverHandsAPacketToThisServerItself_NorToAnotherFamily()
    {
        var record = Joined();
        // On rs1: the slots rs3 took from rs1 name rs1 itself — nothing to hand on there.
        var onRs1 = new SecondChanceService("web", IPAddress.Parse("198.18.0.100"), 80, false, "198.18.0.11:80", record);
        Assert.All(SecondChanceRules.PreviousOwners(onRs1), p => Assert.Equal(IPAddress.Parse("198.18.0.12"), p.Address));
        // An IPv6 service gets no rules (not built), only the empty dispatch.
        var v6 = new SecondChanceService("web6", IPAddress.Parse("2001:db8::100"), 80, false, "198.18.0.11:80", record);
        var script = SecondChanceRules.Render([v6], 1);
        Assert.DoesNotContain("chain s_0", script);
        Assert.DoesNotContain("vmap", script);
    }

    [Fact]
    public void Render_HashesTheSourceAddressAlone_WhenTheLoadBalancersDo()
    {
        var service = new SecondChanceService("web", IPAddress.Parse("198.18.0.100"), 80, SourceAddressOnly: true, "198.18.0.13:80", Joined());
        Assert.Contains("jhash ip saddr mod 7 seed 0x00000001 @prev_0", SecondChanceRules.Render([service], 1));
    }
}
