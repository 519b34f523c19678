using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Lab;
using Merlin.Model;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// Real TCP through the dataplane, in the lab's namespaces (client, lb1, rs1–rs3 on one bridge; the
/// client never runs in the root namespace). The dataplane is the production one: nft, netlink and
/// the kernel's neighbour table of lb1, nothing faked.
/// </summary>
public class TrafficTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private const uint Seed = 0x5eed1234;

    private static NftablesDataplane Dataplane(LabHost lb, uint seed = Seed) => new(new NftablesOptions
    {
        HashSeed = seed,
        Interface = lb.Interface,
        NetworkNamespace = lb.Namespace,
        ResolveWait = TimeSpan.FromSeconds(3),
    }, NullLogger<NftablesDataplane>.Instance);

    /// <summary>lb1 with the VIP routed to it, and rs1–rs3 serving.</summary>
    private static async Task<Lab.Lab> OneLoadBalancerLabAsync()
    {
        Lab.Lab.Require();
        var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = 3 }, Ct);
        try
        {
            await lab.StartServersAsync(ct: Ct);
            await lab.AssignVipAsync(lab["lb1"], Ct);
            return lab;
        }
        catch
        {
            await lab.DisposeAsync();
            throw;
        }
    }

    private static Dictionary<ServiceKey, ServiceState> OneService(Lab.Lab lab, bool ipv6, ForwardMethod forward, int port, Func<string, uint>? weight = null)
    {
        var vip = ipv6 ? lab.Vip6! : lab.Vip;
        var key = ServiceKey.ForAddress(vip, (ushort)port, Protocol.Tcp);
        var servers = lab.RealServers.ToDictionary(
            rs => new RealServerKey(ipv6 ? rs.Address6! : rs.Address, (ushort)port),
            rs => new RealServerConfig { Weight = weight?.Invoke(rs.Name) ?? 1, Forward = forward });
        return new() { [key] = new ServiceState(key, new ServiceConfig { Scheduler = "wrr" }, servers) };
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Dsr_300Requests_AreSpreadOverThreeServers_AndRepliesBypassTheLoadBalancer(bool ipv6)
    {
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        var dataplane = Dataplane(lb);
        await dataplane.ReconcileAsync(OneService(lab, ipv6, ForwardMethod.Route, Lab.Lab.HttpPort));
        Assert.Empty(dataplane.Issues);   // every real server's MAC resolved

        var lbBefore = await lb.GetLinkStatsAsync();
        var clientBefore = await lab.Client.GetLinkStatsAsync();
        var report = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.Lab.HttpPort, ipv6), new LabRequestOptions { Count = 300, SourcePorts = SpreadPorts }, Ct);
        var lbAfter = await lb.GetLinkStatsAsync();
        var clientAfter = await lab.Client.GetLinkStatsAsync();

        Output($"per server: {string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))}; lb1 rx {lbAfter.RxPackets - lbBefore.RxPackets} tx {lbAfter.TxPackets - lbBefore.TxPackets}, client tx {clientAfter.TxPackets - clientBefore.TxPackets} rx {clientAfter.RxPackets - clientBefore.RxPackets}");
        Assert.True(report.Successes == 300, $"{report.Failures} failures: {string.Join(", ", report.Errors.Select(e => $"{e.Key} {e.Value}"))}\n{await lab.DescribeAsync()}");
        foreach (var rs in lab.RealServers)
            Assert.InRange(report.PerServer.GetValueOrDefault(rs.Name), 75, 123);   // 33% ± 8% of 300
        // lb1 receives what the client sends and nothing else; the replies (as many packets again)
        // reach the client straight from the real servers.
        long lbReceived = lbAfter.RxPackets - lbBefore.RxPackets;
        long clientSent = clientAfter.TxPackets - clientBefore.TxPackets;
        long clientReceived = clientAfter.RxPackets - clientBefore.RxPackets;
        Assert.InRange(lbReceived, clientSent - 20, clientSent + 20);
        Assert.True(clientReceived > 1000, $"the client received {clientReceived} packets");
        Assert.InRange(lbAfter.TxPackets - lbBefore.TxPackets, lbReceived - 20, lbReceived + 20);   // each forwarded once
    }

    [Fact]
    public async Task Dsr_Drain_NewConnectionsAvoidTheServer_WhileItsEstablishedConnectionsKeepWorking()
    {
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        var dataplane = Dataplane(lb);
        await dataplane.ReconcileAsync(Merge(OneService(lab, false, ForwardMethod.Route, Lab.Lab.EchoPort), OneService(lab, false, ForwardMethod.Route, Lab.Lab.HttpPort)));

        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort),
            new LabHoldOptions { Connections = 20, Only = "rs1", Duration = TimeSpan.FromSeconds(6), MaxAttempts = 400 });
        Assert.Equal(20, await hold.WaitConnectedAsync(ct: Ct));

        // Drain rs1 in both services, as the health checker would.
        await dataplane.ReconcileAsync(Merge(
            OneService(lab, false, ForwardMethod.Route, Lab.Lab.EchoPort, name => name == "rs1" ? 0u : 1u),
            OneService(lab, false, ForwardMethod.Route, Lab.Lab.HttpPort, name => name == "rs1" ? 0u : 1u)));
        var fresh = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.Lab.HttpPort), new LabRequestOptions { Count = 60 }, Ct);
        var held = await hold.ReportAsync(Ct);

        Output($"after the drain: {string.Join(", ", fresh.PerServer.Select(p => $"{p.Key} {p.Value}"))}; held {held.Survived}/20 on rs1 ({held.Exchanges} exchanges)");
        Assert.Equal(60, fresh.Successes);
        Assert.Equal(0, fresh.PerServer.GetValueOrDefault("rs1"));
        Assert.True(held.Survived == 20, $"{held.Survived} of 20 survived: {string.Join("; ", held.Connections.Where(c => !c.Survived).Select(c => c.Error))}");
        Assert.All(held.Connections, c => Assert.Equal("rs1", c.Server));
    }

    [Fact]
    public async Task Dsr_Drain_WithoutThePinnedFlows_WouldBreakTheSameConnections()
    {
        // The control for the test above: the pins are what keeps those connections, not luck.
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        var dataplane = Dataplane(lb);
        await dataplane.ReconcileAsync(OneService(lab, false, ForwardMethod.Route, Lab.Lab.EchoPort));

        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort),
            new LabHoldOptions { Connections = 20, Only = "rs1", Duration = TimeSpan.FromSeconds(6), MaxAttempts = 400 });
        Assert.Equal(20, await hold.WaitConnectedAsync(ct: Ct));
        await dataplane.ReconcileAsync(OneService(lab, false, ForwardMethod.Route, Lab.Lab.EchoPort, name => name == "rs1" ? 0u : 1u));
        await lb.ExecAsync("nft", "flush", "map", "netdev", "merlin", "flows4");
        var held = await hold.ReportAsync(Ct);

        Output($"without pins: {held.Survived}/20 survived; {string.Join("; ", held.Connections.Select(c => c.Error).Distinct())}");
        Assert.Equal(0, held.Survived);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Dsr_AServerThatLeaves_ItsPinnedFlowsGoWhereTheTableSays_AndAreResetAtOnce(bool ipv6)
    {
        // A flow pinned to a server that left its service fails the ingress chain's pin rule at its live check, after
        // that rule wrote the pinned MAC into the frame. It must still reach its service's chain and go to the table's
        // owner, which resets it at once (it has no socket). When a dispatch rule matched the rewritten address, the frame
        // fell through to lb1's own stack (it holds the VIP), and lb1 answered the reset — and a connection whose table
        // owner had it (second chance's case) was lost.
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        var dataplane = Dataplane(lb);
        var all = OneService(lab, ipv6, ForwardMethod.Route, Lab.Lab.EchoPort);
        await dataplane.ReconcileAsync(all);

        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort, ipv6),
            new LabHoldOptions { Connections = 10, Only = "rs1", Interval = TimeSpan.FromMilliseconds(100), Duration = TimeSpan.FromSeconds(4), Timeout = TimeSpan.FromSeconds(3), MaxAttempts = 400 });
        Assert.Equal(10, await hold.WaitConnectedAsync(ct: Ct));
        var rs1 = ipv6 ? lab["rs1"].Address6! : lab["rs1"].Address;
        var service = all.Values.Single();
        var lbResets = await OutResetsAsync(lb);
        var othersBefore = await Task.WhenAll(new[] { lab["rs2"], lab["rs3"] }.Select(OutResetsAsync));
        await dataplane.ReconcileAsync(new Dictionary<ServiceKey, ServiceState> { [service.Key] = service with { Servers = service.Servers.Where(s => !s.Key.Address.Equals(rs1)).ToDictionary() } });
        var held = await hold.ReportAsync(Ct);
        var othersAfter = await Task.WhenAll(new[] { lab["rs2"], lab["rs3"] }.Select(OutResetsAsync));

        long byLb = await OutResetsAsync(lb) - lbResets, byOthers = othersAfter.Sum() - othersBefore.Sum();
        Output($"{(ipv6 ? "IPv6" : "IPv4")}: {held.Survived}/10 survived; errors {string.Join(", ", held.Connections.Select(c => $"{c.Error} at {c.FailedAtMs} ms"))}; resets sent by lb1 {byLb}, by rs2 and rs3 {byOthers}");
        Assert.Equal(0, held.Survived);
        Assert.All(held.Connections, c => Assert.True(c.Error == "ConnectionReset" && c.FailedAtMs < 2_000, $"{c.LocalPort}: {c.Error} at {c.FailedAtMs} ms"));
        // The resets came from the servers the table names now, none from lb1's own stack.
        Assert.Equal(0, byLb);
        Assert.True(byOthers >= 10, $"rs2 and rs3 sent {byOthers} resets for 10 connections");
    }

    /// <summary>The TCP resets a host's stack has sent (<c>/proc/net/snmp</c>, Tcp OutRsts; IPv4 and IPv6 alike).</summary>
    private static async Task<long> OutResetsAsync(LabHost host)
    {
        var lines = (await host.ExecAsync("cat", "/proc/net/snmp")).StandardOutput.Split('\n').Where(l => l.StartsWith("Tcp:", StringComparison.Ordinal)).ToList();
        var names = lines[0].Split(' ');
        var values = lines[1].Split(' ');
        return long.Parse(values[Array.IndexOf(names, "OutRsts")], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Dsr_Failover_ToANodeWithTheSameSeed_KeepsEstablishedConnections(bool sameSeed)
    {
        // Both nodes programmed from the same state; the VIP moves from lb1 to lb2 (address and
        // gratuitous ARP). lb2 has no pins: it sends each flow where lb1's Maglev table did, which
        // only works when the seed is the same. With another seed the test shows it would not.
        Lab.Lab.Require();
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 3 }, Ct);
        await lab.StartServersAsync(ct: Ct);
        var desired = OneService(lab, false, ForwardMethod.Route, Lab.Lab.EchoPort);
        var lb1 = Dataplane(lab["lb1"]);
        var lb2 = Dataplane(lab["lb2"], sameSeed ? Seed : 0x0badcafe);
        await lb1.ReconcileAsync(desired);
        await lb2.ReconcileAsync(desired);
        await lab.AssignVipAsync(lab["lb1"], Ct);

        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort), new LabHoldOptions { Connections = 20, Duration = TimeSpan.FromSeconds(6) });
        Assert.Equal(20, await hold.WaitConnectedAsync(ct: Ct));
        await lab.AssignVipAsync(lab["lb2"], Ct);
        var held = await hold.ReportAsync(Ct);

        Output($"same seed {sameSeed}: {held.Survived}/20 survived ({string.Join(", ", held.PerServer.Select(p => $"{p.Key} {p.Value}"))})");
        if (sameSeed) Assert.True(held.Survived == 20, string.Join("; ", held.Connections.Where(c => !c.Survived).Select(c => $"{c.Server}: {c.Error}")));
        else Assert.InRange(held.Survived, 0, 15);
    }

    [Fact]
    public async Task Nat_300Requests_AreSpreadOverThreeServers()
    {
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        // NAT: replies must go back through the LB, which undoes the DNAT.
        foreach (var rs in lab.RealServers) await rs.ReplaceRouteAsync($"{lab.Client.Address}/32", lb.Address);
        var dataplane = Dataplane(lb);
        await dataplane.ReconcileAsync(OneService(lab, false, ForwardMethod.Masq, Lab.Lab.HttpPort));

        var report = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.Lab.HttpPort), new LabRequestOptions { Count = 300, SourcePorts = SpreadPorts }, Ct);

        Output($"per server: {string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))}");
        Assert.True(report.Successes == 300, $"{report.Failures} failures: {string.Join(", ", report.Errors.Select(e => $"{e.Key} {e.Value}"))}\n{await lab.DescribeAsync()}");
        foreach (var rs in lab.RealServers)
            Assert.InRange(report.PerServer.GetValueOrDefault(rs.Name), 75, 123);
    }

    [Fact]
    public async Task Dsr_AServerWhoseMacIsUnknown_HoldsNoSlotUntilItResolves_ThenJoins()
    {
        await using var lab = await OneLoadBalancerLabAsync();
        var lb = lab["lb1"];
        var dataplane = new NftablesDataplane(new NftablesOptions
        {
            HashSeed = Seed, Interface = lb.Interface, NetworkNamespace = lb.Namespace, ResolveWait = TimeSpan.FromMilliseconds(500),
        }, NullLogger<NftablesDataplane>.Instance);
        var late = IPAddress.Parse("198.18.0.99");   // nobody has it yet
        var desired = OneService(lab, false, ForwardMethod.Route, Lab.Lab.HttpPort);
        var state = desired.Values.Single();
        var servers = new Dictionary<RealServerKey, RealServerConfig>(state.Servers) { [new RealServerKey(late, 80)] = new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route } };
        desired[state.Key] = state with { Servers = servers };

        await dataplane.ReconcileAsync(desired);

        Assert.Equal([late], dataplane.UnresolvedServers);
        Assert.Contains(dataplane.Issues, i => i.Server?.Address.Equals(late) == true && i.Reason.Contains("not known yet"));
        var before = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.Lab.HttpPort), new LabRequestOptions { Count = 90 }, Ct);
        Assert.Equal(90, before.Successes);   // no slot points at the unknown server

        // The address appears (on rs3): the kernel's managed neighbour entry resolves it, a resync programs it.
        await lab["rs3"].IpAsync("addr", "add", "198.18.0.99/24", "dev", "eth0");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (dataplane.UnresolvedServers.Count > 0 && clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(500, Ct);
            await dataplane.ReconcileAsync(desired);
        }
        Output($"resolved after {clock.ElapsedMilliseconds} ms");
        Assert.Empty(dataplane.UnresolvedServers);
        Assert.Empty(dataplane.Issues);
        var after = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.Lab.HttpPort), new LabRequestOptions { Count = 120 }, Ct);
        Output($"after: {string.Join(", ", after.PerServer.Select(p => $"{p.Key} {p.Value}"))}");
        Assert.Equal(120, after.Successes);
        Assert.InRange(after.PerServer.GetValueOrDefault("rs3"), 40, 80);   // rs3 now answers for two of four backends
    }

    /// <summary>
    /// The 300 flows of a spread measurement: fixed source ports, so a run's spread is the hash's and
    /// the table's, reproducible, not the luck of 300 random ephemeral ports (with which one server in
    /// three lands outside 33 % ± 8 % in about 1 run of 140).
    /// </summary>
    internal static readonly (int, int) SpreadPorts = (44000, 44299);

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    private static Dictionary<ServiceKey, ServiceState> Merge(params Dictionary<ServiceKey, ServiceState>[] parts) =>
        parts.SelectMany(p => p).ToDictionary(kv => kv.Key, kv => kv.Value);
}
