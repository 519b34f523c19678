using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>Which pins the dataplane deletes after a change, in the layout alone and against the kernel's flow maps.</summary>
public class PinSweepTests
{
    private static readonly ServiceState Web = Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80));
    private static readonly ServiceState Dns = Service(Udp("198.18.0.11", 53), Route("198.18.1.11", 53), Route("198.18.1.12", 53));
    private static readonly ServiceState Web6 = Service(Tcp("2001:db8::10", 80), Route("2001:db8:1::11", 80), Route("2001:db8:1::12", 80));

    /// <summary>A flows4 element as the kernel holds it: saddr . daddr . sport . dport, each field padded to 4 bytes; the MAC.</summary>
    private static SetElement Pin4(string client, ushort sport, string vip, ushort dport, string server)
    {
        var key = new byte[16];
        IPAddress.Parse(client).GetAddressBytes().CopyTo(key, 0);
        IPAddress.Parse(vip).GetAddressBytes().CopyTo(key, 4);
        (key[8], key[9], key[12], key[13]) = ((byte)(sport >> 8), (byte)sport, (byte)(dport >> 8), (byte)dport);
        return new SetElement(key, MacOf(IPAddress.Parse(server)).GetAddressBytes());
    }

    /// <summary>A flows6 element: a 32-bit hash of the address pair (host order) . sport . dport.</summary>
    private static SetElement Pin6(uint hash, ushort sport, ushort dport, string server)
    {
        var key = new byte[12];
        BitConverter.GetBytes(hash).CopyTo(key, 0);
        (key[4], key[5], key[8], key[9]) = ((byte)(sport >> 8), (byte)sport, (byte)(dport >> 8), (byte)dport);
        return new SetElement(key, MacOf(IPAddress.Parse(server)).GetAddressBytes());
    }

    [Fact]
    public void Stale_IPv4_IsAPinToAServerNotInItsService_OrOfAServiceGone()
    {
        var layout = Build(State(Web, Dns));
        var kept = Pin4("198.18.9.1", 40000, "198.18.0.10", 80, "198.18.1.12");
        var left = Pin4("198.18.9.1", 40001, "198.18.0.10", 80, "198.18.1.14");           // .14 serves no one
        var otherService = Pin4("198.18.9.1", 40002, "198.18.0.11", 53, "198.18.1.13");   // .13 serves Web, not Dns
        var gone = Pin4("198.18.9.1", 40003, "198.18.0.99", 80, "198.18.1.11");           // no such service
        var dnsPin = Pin4("198.18.9.2", 5353, "198.18.0.11", 53, "198.18.1.11");

        var stale = PinSweep.Stale(false, [kept, left, otherService, gone, dnsPin], layout.Pinned);

        Assert.Equal([left.Key, otherService.Key, gone.Key], stale);
    }

    [Fact]
    public void Stale_IPv6_IsAPinToAServerOfNoIPv6ServiceOnItsPort()
    {
        var layout = Build(State(Web, Web6));
        var kept = Pin6(0xdeadbeef, 40000, 80, "2001:db8:1::12");
        var left = Pin6(0xdeadbeef, 40001, 80, "2001:db8:1::13");
        var otherPort = Pin6(0xfeedface, 40002, 443, "2001:db8:1::11");
        var ipv4Server = Pin6(0xfeedface, 40003, 80, "198.18.1.11");   // serves the IPv4 service on port 80 only

        var stale = PinSweep.Stale(true, [kept, left, otherPort, ipv4Server], layout.Pinned);

        Assert.Equal([left.Key, otherPort.Key, ipv4Server.Key], stale);
        Assert.Empty(PinSweep.Stale(false, [], layout.Pinned));
    }

    [Fact]
    public void Stale_RefusesAPinOfAnotherShape()
    {
        var wrong = new SetElement(new byte[12], new byte[6]);

        var e = Assert.Throws<FormatException>(() => PinSweep.Stale(false, [wrong], Build(State(Web)).Pinned));
        Assert.Contains("flows4", e.Message);
    }

    [Fact]
    public void OnePacketServices_HoldNoPins()
    {
        var onePacket = Service(Udp("198.18.0.12", 4500), Config("wrr", onePacket: true), Route("198.18.1.11", 4500));

        var layout = Build(State(Web, onePacket));

        Assert.Equal([Web.Key], layout.Pinned.Select(p => p.Service));
        Assert.Single(PinSweep.Stale(false, [Pin4("198.18.9.1", 1, "198.18.0.12", 4500, "198.18.1.11")], layout.Pinned));
    }

    public static TheoryData<string, bool> Changes => new()
    {
        { "weight changed", false },
        { "server drained", false },
        { "server added", false },
        { "service added", false },
        { "server removed", true },
        { "server's MAC changed", true },
        { "service removed", true },
        { "service made one-packet", true },
    };

    [Theory]
    [MemberData(nameof(Changes))]
    public void Departed_OnlyWhenAServiceLosesAServerItHad(string change, bool departed)
    {
        var first = Build(State(Web, Dns));
        var macs = MacsFor([Web, Dns, Service(Tcp("198.18.0.12", 80), Route("198.18.1.14", 80))]);
        var now = change switch
        {
            "weight changed" => State(Service(Web.Key, Route("198.18.1.11", 80, 3), Route("198.18.1.12", 80), Route("198.18.1.13", 80)), Dns),
            "server drained" => State(Service(Web.Key, Route("198.18.1.11", 80, 0), Route("198.18.1.12", 80), Route("198.18.1.13", 80)), Dns),
            "server added" => State(Service(Web.Key, Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80), Route("198.18.1.14", 80)), Dns),
            "service added" => State(Web, Dns, Service(Tcp("198.18.0.12", 80), Route("198.18.1.14", 80))),
            "server removed" => State(Service(Web.Key, Route("198.18.1.11", 80), Route("198.18.1.13", 80)), Dns),
            "server's MAC changed" => State(Web, Dns),
            "service removed" => State(Web),
            "service made one-packet" => State(Web, Service(Dns.Key, Config("wrr", onePacket: true), Route("198.18.1.11", 53), Route("198.18.1.12", 53))),
            _ => throw new ArgumentException(change),
        };
        if (change == "server's MAC changed") macs[IPAddress.Parse("198.18.1.12")] = MacOf(IPAddress.Parse("198.18.9.12"));

        var second = Build(now, first.Assignment, macs: macs);

        Assert.Equal(departed, PinSweep.Departed(first.Pinned, second.Pinned));
    }

    /// <summary>Departed is exactly "some (service, MAC) pair of before is missing now", over a walk of random changes.</summary>
    [Fact]
    public void Departed_AgreesWithTheSetOfPairs_OverRandomChanges()
    {
        var random = new Random(1807);
        var servers = Enumerable.Range(11, 8).Select(i => $"198.18.1.{i}").ToArray();
        var services = Enumerable.Range(10, 4).Select(i => Tcp($"198.18.0.{i}", 80)).ToArray();
        var now = new Dictionary<ServiceKey, Dictionary<string, uint>> { [services[0]] = new() { [servers[0]] = 1 } };
        static HashSet<(ServiceKey, string)> Pairs(Layout.Layout layout) =>
            layout.Pinned.SelectMany(p => p.Macs.Elements().Select(m => (p.Service, m.Key))).ToHashSet();
        Dictionary<ServiceKey, ServiceState> State() =>
            now.Where(s => s.Value.Count > 0).ToDictionary(s => s.Key, s => Service(s.Key, s.Value.Select(x => Route(x.Key, 80, x.Value)).ToArray()));

        var before = Build(State());
        int departed = 0;
        for (int i = 0; i < 400; i++)
        {
            // One change: a server added, removed or reweighted (0 drains it), or a service removed.
            var service = services[random.Next(services.Length)];
            if (!now.TryGetValue(service, out var members)) now[service] = members = new();
            var server = servers[random.Next(servers.Length)];
            switch (random.Next(7))
            {
                case 0: case 1: members[server] = (uint)random.Next(1, 4); break;
                case 2: members[server] = 0; break;
                case 3: case 4: if (members.ContainsKey(server)) members[server] = (uint)random.Next(0, 4); else members[server] = 1; break;
                case 5: members.Remove(server); break;
                default: now.Remove(service); break;
            }
            var after = Build(State(), before.Assignment);
            bool expected = !Pairs(before).IsSubsetOf(Pairs(after));
            Assert.Equal(expected, PinSweep.Departed(before.Pinned, after.Pinned));
            departed += expected ? 1 : 0;
            before = after;
        }
        Assert.InRange(departed, 40, 360);   // both answers were exercised
    }

    // ---- against the kernel: pins written into the flow maps as the packet path would, swept by the dataplane ----

    [Fact]
    public async Task AServerThatLeaves_LosesItsPins_InBothFamilies_AndNoOtherPinIsTouched()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = State(Web, Web6);
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        await dataplane.PinSweepRunning;   // the start's sweep, before the pins it would otherwise judge go in
        AddPins(ns,
            "flows4 { 198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b, 198.18.9.1 . 198.18.0.10 . 40001 . 80 : 02:00:c6:12:01:0c, 198.18.9.2 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0c }",
            "flows6 { 7 . 40000 . 80 : 02:00:00:00:00:11, 8 . 40001 . 80 : 02:00:00:00:00:12 }");

        await dataplane.ReconcileAsync(State(Service(Web.Key, Route("198.18.1.11", 80), Route("198.18.1.13", 80)), Service(Web6.Key, Route("2001:db8:1::11", 80))));
        await dataplane.PinSweepRunning;

        Assert.Equal(["198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b"], Pins(ns, "flows4"));
        Assert.Equal(["7 . 40000 . 80 : 02:00:00:00:00:11"], Pins(ns, "flows6"));
        // Deleted, and the same keys deleted again where a packet may have refreshed them back meanwhile (before Linux 6.3: read again, none found).
        Assert.Equal(Again(["netdev merlin flows4: 2", "netdev merlin flows6: 1"]), nft.Deleted);

        // A weight change takes no server out: no flow map is even read.
        nft.Deleted.Clear();
        await dataplane.ReconcileAsync(State(Service(Web.Key, Route("198.18.1.11", 80, 2), Route("198.18.1.13", 80)), Service(Web6.Key, Route("2001:db8:1::11", 80))));
        await dataplane.PinSweepRunning;
        Assert.Empty(nft.Deleted);
        Assert.Single(Pins(ns, "flows4"));
    }

    [Fact]
    public async Task ARestartedDaemon_SweepsPinsLeftByAChangeItDidNotFinish()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = State(Web);
        var (first, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await first.ReconcileAsync(desired);
        await first.PinSweepRunning;   // else the first dataplane's own start-up sweep may delete the pin below
        // As if the previous run died between its transaction and its sweep: a pin to a server the tables no longer hold.
        AddPins(ns, "flows4 { 198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b, 198.18.9.1 . 198.18.0.10 . 40001 . 80 : 02:00:c6:12:01:0e }");

        var (second, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await second.ReadAsync(CancellationToken.None);
        await second.PinSweepRunning;

        Assert.Equal(["198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b"], Pins(ns, "flows4"));
        Assert.Equal(Again(["netdev merlin flows4: 1"]), nft.Deleted);
    }

    [Fact]
    public void Read_GivesTheKernelsBytes_AndDelete_TakesOnlyTheKeysGiven_OrNothingIfOneIsGone_UnlessToldToPassOverIt()
    {
        using var ns = TestNamespace.WithInterface();
        ns.NftScript("""
            table netdev t {
                map flows4 { type ipv4_addr . ipv4_addr . inet_service . inet_service : ether_addr; size 65536; flags dynamic,timeout; timeout 300s; }
            }
            """);
        var elements = string.Join(", ", Enumerable.Range(0, 3000).Select(i => $"198.18.9.{i / 250} . 198.18.0.10 . {10000 + i} . 80 : 02:00:c6:12:01:{i % 7:x2}"));
        ns.NftScript($"add element netdev t flows4 {{ {elements} }}\n");
        using var socket = NfNetlink.Open(ns.Name);

        var read = SetElements.Read(socket, "netdev", "t", "flows4");

        Assert.Equal(3000, read.Count);
        var one = read.Single(e => e.Key[8] == (10005 >> 8) && e.Key[9] == (10005 & 0xff));
        Assert.Equal(Pin4("198.18.9.0", 10005, "198.18.0.10", 80, "198.18.1.5").Key, one.Key);   // 02:00:c6:12:01:05 is MacOf(198.18.1.5)
        Assert.Equal(MacOf(IPAddress.Parse("198.18.1.5")).GetAddressBytes(), one.Value);
        // More keys than one message holds: several messages, one transaction.
        var delete = read.Where(e => e.Value[5] < 3).Select(e => e.Key).ToList();
        Assert.Equal(1, SetElements.Delete(socket, "netdev", "t", "flows4", delete));
        Assert.Equal(3000 - delete.Count, SetElements.Read(socket, "netdev", "t", "flows4").Count);
        // A key that is gone (deleted above): the kernel refuses the transaction, and the other key in it stays.
        var kept = read.First(e => e.Value[5] >= 3).Key;
        Assert.Null(SetElements.Delete(socket, "netdev", "t", "flows4", [kept, delete[0]]));
        Assert.Contains(SetElements.Read(socket, "netdev", "t", "flows4"), e => e.Key.AsSpan().SequenceEqual(kept));
        // Even if gone (the sweep's second look): the gone key is passed over, the other deleted; before Linux 6.3, refused.
        try
        {
            Assert.Equal(1, SetElements.Delete(socket, "netdev", "t", "flows4", [kept, delete[0]], evenIfGone: true));
            Assert.DoesNotContain(SetElements.Read(socket, "netdev", "t", "flows4"), e => e.Key.AsSpan().SequenceEqual(kept));
        }
        catch (NotSupportedException)
        {
            Assert.True(Environment.OSVersion.Version < new Version(6, 3), $"refused by Linux {Environment.OSVersion.Version}");
        }
        Assert.Empty(SetElements.Read(socket, "netdev", "t", "no_such_set"));
    }

    private static List<string> Again(List<string> deleted) =>
        Environment.OSVersion.Version >= new Version(6, 3) ? [.. deleted, .. deleted.Select(d => d + " again")] : deleted;

    private static void AddPins(TestNamespace ns, params string[] maps) =>
        ns.NftScript(string.Concat(maps.Select(m => $"add element netdev merlin {m}\n")));

    /// <summary>A flow map's pins as nft lists them ("key : MAC"), expiry left out.</summary>
    private static List<string> Pins(TestNamespace ns, string map) =>
        Kernel.NftJson.Elements(ns.Nft("-j", "list", "map", "netdev", "merlin", map)).Select(e => e.Element).Order(StringComparer.Ordinal).ToList();
}
