using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// The real merlin daemon (<c>--dataplane nftables</c>) in the lab: one process per load balancer, in its
/// namespace, API and health on that namespace's loopback, both on one etcd (on the lab's etcd host),
/// services and servers created with meradm, real HTTP and echo traffic from the client namespace.
/// </summary>
public class DaemonLabTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private sealed class Setup : IAsyncDisposable
    {
        public required Lab.Lab Lab { get; init; }
        public required LabMerlin Lb1 { get; init; }
        public required LabMerlin Lb2 { get; init; }

        public async ValueTask DisposeAsync()
        {
            await Lb1.DisposeAsync();
            await Lb2.DisposeAsync();
            await Lab.DisposeAsync();
        }
    }

    /// <summary>A lab with two LBs running merlin on one etcd, <paramref name="realServers"/> web servers, and a
    /// service "web" (VIP:80, mh with port hashing) on rs1–rs3 and "echo" (VIP:9000) on the same three.</summary>
    private static async Task<Setup> StartAsync(int realServers)
    {
        Lab.Lab.Require();
        Requires.Etcd();
        Requires.Command("nft", "apt-get install nftables");
        var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = realServers, ExtraHosts = ["etcd"], IPv6 = false }, Ct);
        LabMerlin? lb1 = null, lb2 = null;
        try
        {
            await lab.StartServersAsync(ct: Ct);
            var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], Ct);
            var options = new LabMerlinOptions { EtcdEndpoint = etcd };
            lb1 = await LabMerlin.StartAsync(lab["lb1"], options, Ct);
            lb2 = await LabMerlin.StartAsync(lab["lb2"], options, Ct);
            foreach (var (name, port) in new[] { ("web", Lab.Lab.HttpPort), ("echo", Lab.Lab.EchoPort) })
            {
                await lb1.MeradmAsync("service", "add", name, "tcp", $"{lab.Vip}:{port}", "-s", "mh", "-b", "mh-port");
                foreach (var rs in new[] { "rs1", "rs2", "rs3" })
                    await lb1.MeradmAsync("server", "add", name, $"{lab[rs].Address}:{port}", "-w", "1", "-f", "route");
            }
            await lb1.WaitProgrammedAsync(2, 6, ct: Ct);
            await lb2.WaitProgrammedAsync(2, 6, ct: Ct);   // written through lb1, learned from etcd
            await lab.AssignVipAsync(lab["lb1"], Ct);
            return new Setup { Lab = lab, Lb1 = lb1, Lb2 = lb2 };
        }
        catch
        {
            if (lb1 is not null) await lb1.DisposeAsync();
            if (lb2 is not null) await lb2.DisposeAsync();
            await lab.DisposeAsync();
            throw;
        }
    }

    [Fact]
    public async Task TwoDaemonsOnOneEtcd_SpreadHttpOverTheServers_AndAVipMoveKeepsEveryLongLivedConnection()
    {
        await using var s = await StartAsync(realServers: 3);
        var lab = s.Lab;

        var report = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 300, SourcePorts = TrafficTests.SpreadPorts }, Ct);

        Output($"through lb1: {string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))}");
        Assert.True(report.Successes == 300, $"{report.Failures} failures: {string.Join(", ", report.Errors.Select(e => $"{e.Key} {e.Value}"))}\n{await lab.DescribeAsync()}");
        foreach (var rs in lab.RealServers)
            Assert.InRange(report.PerServer.GetValueOrDefault(rs.Name), 75, 123);   // 33% ± 8% of 300

        // lb2's daemon programmed the same tables from the same store with the same seed: it sends every
        // flow where lb1 did, without any state from lb1.
        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort), new LabHoldOptions { Connections = 20, Duration = TimeSpan.FromSeconds(6) });
        Assert.Equal(20, await hold.WaitConnectedAsync(ct: Ct));
        await lab.AssignVipAsync(lab["lb2"], Ct);
        var held = await hold.ReportAsync(Ct);

        Output($"VIP moved to lb2: {held.Survived}/20 survived ({string.Join(", ", held.PerServer.Select(p => $"{p.Key} {p.Value}"))})");
        Assert.True(held.Survived == 20, string.Join("; ", held.Connections.Where(c => !c.Survived).Select(c => $"{c.Server}: {c.Error}")));
        var after = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 60 }, Ct);
        Assert.Equal(60, after.Successes);   // and new connections go through lb2
    }

    [Fact]
    public async Task AddingAFourthServer_MovesAtMostAQuarterOfTheFlows_TimesOnePointTwo()
    {
        await using var s = await StartAsync(realServers: 4);
        var lab = s.Lab;
        var flows = new LabRequestOptions { Count = 1000, SourcePorts = (42000, 42999), Flows = true, Concurrency = 4, Duration = TimeSpan.FromMinutes(2) };

        var before = await lab.Client.HttpAsync(lab.VipEndpoint(), flows, Ct);
        await s.Lb1.MeradmAsync("server", "add", "web", $"{lab["rs4"].Address}:{Lab.Lab.HttpPort}", "-w", "1", "-f", "route");
        await s.Lb1.WaitProgrammedAsync(2, 7, ct: Ct);
        await s.Lb2.WaitProgrammedAsync(2, 7, ct: Ct);
        // The same flows again, through lb2: it has never seen them, so each goes where the new table
        // says (lb1 would keep its pins). Same seed, so without the new server none would move.
        await lab.AssignVipAsync(lab["lb2"], Ct);
        var after = await lab.Client.HttpAsync(lab.VipEndpoint(), flows, Ct);

        var (compared, moved, toNew) = LabMerlin.CompareFlows(before, after);
        Output($"before: {string.Join(", ", before.PerServer.Select(p => $"{p.Key} {p.Value}"))}; after: {string.Join(", ", after.PerServer.Select(p => $"{p.Key} {p.Value}"))}; " +
            $"{moved} of {compared} flows moved ({100.0 * moved / compared:0.0}%), {toNew} to rs4");
        Assert.Equal(1000, before.Successes);
        Assert.Equal(1000, after.Successes);
        Assert.True(compared >= 990, $"only {compared} flows answered in both runs");
        Assert.InRange(moved, 1, (int)(compared * 1.2 / 4));   // at most 1.2 × the ideal 1/4
        Assert.InRange(after.PerServer.GetValueOrDefault("rs4"), 175, 325);   // the new server takes its quarter (25% ± 7.5%)
        Assert.True(toNew >= moved * 3 / 4, $"{moved} flows moved but only {toNew} to the new server");
    }

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);
}
