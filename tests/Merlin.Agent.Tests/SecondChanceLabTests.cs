using System.Text.RegularExpressions;
using System.Net;
using Merlin.Lab;
using Merlin.Lab.Server;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>
/// Second chance with real TCP: the real daemon programs an md-table service (nftables DSR) on lb1, agents
/// attach rs1 and rs2. Long-lived connections open on rs1 alone; then rs2 joins, so about half of their slots
/// move to it; then lb1's flow pins are flushed, which is what a flow meets when ECMP or a failover moves it to
/// another load-balancer node. Without second chance on rs2 those connections reset; with it they survive.
/// Over IPv4 (the hand-off marked by the header's reserved bit) and IPv6 (marked by the flow label).
/// </summary>
public sealed class SecondChanceLabTests
{
    private const int Connections = 20;
    private const int MetricsPort = 9477;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static ITestOutputHelper? Out => TestContext.Current.TestOutputHelper;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ConnectionsWhoseSlotMoved_ResetWithoutSecondChance_AndSurviveWithIt(bool ipv6)
    {
        Lab.Lab.Require();
        Requires.Command("nft", "apt-get install nftables");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = 2, IPv6 = ipv6, VipsOnRealServers = false }, Ct);
        var family = ipv6 ? "ip6" : "ip";
        using var pki = new TestPki("Merlin Lab CA");
        var (lb1, rs1, rs2) = (lab["lb1"], lab["rs1"], lab["rs2"]);
        var (cert, key) = pki.WritePem(pki.Server(lb1.Address), "merlin-lb1");
        await using var lb = await LabMerlin.StartAsync(lb1, new LabMerlinOptions { Tls = new LabMerlinTls(cert, key, pki.CaFile) }, Ct);
        var vip = lab.VipEndpoint(Lab.Lab.EchoPort, ipv6);
        await lb.MeradmAsync("service", "add", "web", "tcp", vip.ToString(), "-s", "mh", "-b", "mh-port,md-table");
        await lab.StartServersAsync(ct: Ct);
        await using var agent1 = await StartAgentAsync(lab, pki, rs1, lb1, secondChance: true);
        await lb.WaitProgrammedAsync(1, 1, ct: Ct);
        await lab.AssignVipAsync(lb1, Ct);

        // Off: rs2 without second chance.
        var (off, offHanded) = await MoveHalfAsync(lab, lb, pki, ipv6, secondChance: false);
        // On: rs2 left (its slots went back to rs1), and joins again with second chance.
        var (on, onHanded) = await MoveHalfAsync(lab, lb, pki, ipv6, secondChance: true);

        Out?.WriteLine($"{(ipv6 ? "IPv6" : "IPv4")}: second chance off: {Describe(off)}; on: {Describe(on)}, {onHanded} packet(s) handed from rs2 to rs1");
        Assert.True(off.Failed > 0, $"without second chance some connections should have reset: {Describe(off)}");
        Assert.Equal(0, offHanded);
        Assert.True(on.Survived == Connections, $"with second chance every connection should survive: {Describe(on)}");
        Assert.True(onHanded > 0, "rs2 handed no packet on");
        // rs1 took the hand-offs: it had every connection.
        Assert.True(await CounterAsync(rs1, family, "accepted_0") >= onHanded / 2, "rs1 accepted too few hand-offs");
        Assert.Equal(0, await CounterAsync(rs1, family, "refused_0"));
    }

    /// <summary>
    /// Opens the connections (all on rs1), lets rs2 join (with or without second chance), flushes lb1's pins, keeps
    /// exchanging for a few seconds, and stops rs2's agent again (drain period 0: its slots return to rs1).
    /// </summary>
    private static async Task<(HoldReport Report, long Handed)> MoveHalfAsync(Lab.Lab lab, LabMerlin lb, TestPki pki, bool ipv6, bool secondChance)
    {
        var (lb1, rs2) = (lab["lb1"], lab["rs2"]);
        var family = ipv6 ? "ip6" : "ip";
        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort, ipv6), new LabHoldOptions
        {
            Connections = Connections, Interval = TimeSpan.FromMilliseconds(100), Duration = TimeSpan.FromSeconds(90), Timeout = TimeSpan.FromSeconds(2),
        });
        Assert.Equal(Connections, await hold.WaitConnectedAsync(ct: Ct));
        var mark = lb.Process.LineCount;
        var agent2 = await StartAgentAsync(lab, pki, rs2, lb1, secondChance);
        long handed;
        int exit;
        try
        {
            var server = ipv6 ? $"[{rs2.Address6}]:" : $"{rs2.Address}:";
            await lb.Process.WaitForLineAsync(l => l.Contains("Applied: ", StringComparison.Ordinal) && l.Contains($" server {server}", StringComparison.Ordinal),
                TimeSpan.FromSeconds(30), mark, Ct);
            if (secondChance)
                await agent2.WaitForLineAsync(l => l.Contains("Second chance: rules written", StringComparison.Ordinal) && !l.Contains(" 0 slot(s)", StringComparison.Ordinal),
                    TimeSpan.FromSeconds(30), 0, Ct);
            // What a flow meets on another load-balancer node: no pin, the current table.
            await lb1.ExecAsync("nft", "flush", "map", "netdev", "merlin", ipv6 ? "flows6" : "flows4");
            await Task.Delay(TimeSpan.FromSeconds(3), Ct);
            // lb1 pinned the held flows again (its pinned path, not only the table, carries them from here on).
            var pins = (await lb1.ExecAsync("nft", "list", "map", "netdev", "merlin", ipv6 ? "flows6" : "flows4")).StandardOutput;
            Assert.True(Regex.Matches(pins, @" : ([0-9a-f]{2}:){5}[0-9a-f]{2}").Count >= Connections, $"lb1 holds fewer pins than the {Connections} held flows:\n{pins}");
            handed = secondChance ? await CounterAsync(rs2, family, "handed_0") : 0;
            if (secondChance)
            {
                // The same count in the agent's metrics (read from the kernel every 2 s).
                await Task.Delay(TimeSpan.FromSeconds(2.5), Ct);
                var scrape = (await rs2.ExecAsync("curl", "-s", "--max-time", "5", $"http://127.0.0.1:{MetricsPort}/metrics")).StandardOutput;
                var line = scrape.Split('\n').FirstOrDefault(l => l.StartsWith("merlin_agent_second_chance_packets_total{service=\"web\",kind=\"handed\"}", StringComparison.Ordinal));
                Assert.True(line is not null && long.Parse(line.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture) >= handed, $"metrics of rs2's agent:\n{scrape}");
            }
        }
        finally
        {
            agent2.SendSignal(Signal.Term);
            exit = await agent2.WaitForExitAsync(TimeSpan.FromSeconds(30), Ct);
            Out?.WriteLine($"agent on rs2 (second chance {(secondChance ? "on" : "off")}):\n{agent2.Output}");
            await agent2.DisposeAsync();
        }
        Assert.Equal(0, exit);
        // Detached: its rules are gone with it.
        Assert.NotEqual(0, (await rs2.RunAsync("nft", "list", "table", "ip", "merlin_chance")).ExitCode);
        Assert.NotEqual(0, (await rs2.RunAsync("nft", "list", "table", "ip6", "merlin_chance")).ExitCode);
        var report = await hold.StopAsync(Ct);
        await lb.WaitProgrammedAsync(1, 1, ct: Ct);
        return (report, handed);
    }

    private static async Task<long> CounterAsync(LabHost rs, string family, string name)
    {
        var text = (await rs.ExecAsync("nft", "list", "counter", family, "merlin_chance", name)).StandardOutput;
        var at = text.IndexOf("packets ", StringComparison.Ordinal);
        Assert.True(at >= 0, $"no counter {name} on {rs.Name}: {text}");
        return long.Parse(text[(at + 8)..].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task<LabProcess> StartAgentAsync(Lab.Lab lab, TestPki pki, LabHost rs, LabHost lb, bool secondChance)
    {
        IPAddress[] addresses = rs.Address6 is { } v6 ? [rs.Address, v6] : [rs.Address];
        var (cert, key) = pki.WritePem(pki.Client($"agent-{rs.Name}", "realserver", addresses), $"agent-{rs.Name}");
        var agent = rs.Start([.. LabMerlin.Agent(),
            "--api", $"{lb.Address}:{LabMerlin.ApiPort}", "--ca", pki.CaFile, "--cert", cert, "--key", key,
            "--service", "web", .. addresses.SelectMany(a => new[] { "--address", a.ToString() }), "--weight", "1",
            "--drain-period", "0s", "--state-dir", Path.Combine(lab.TempPath, $"agent-{rs.Name}"),
            .. secondChance ? new[] { "--hash-seed", LabMerlin.DefaultSeed, "--metrics-address", $"127.0.0.1:{MetricsPort}" } : []]);
        try
        {
            await agent.WaitForLineAsync(l => l.Contains("Registered 1 server", StringComparison.Ordinal), TimeSpan.FromSeconds(60), 0, Ct);
        }
        catch
        {
            Out?.WriteLine($"agent on {rs.Name}:\n{agent.Output}");
            await agent.DisposeAsync();
            throw;
        }
        return agent;
    }

    private static string Describe(HoldReport r) =>
        $"{r.Survived}/{r.Requested} survived, opened per server {string.Join(", ", r.PerServer.Select(p => $"{p.Key} {p.Value}"))}";
}
