using System.Diagnostics;
using System.Globalization;
using System.Net;
using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Announcer.Tests;

/// <summary>
/// An active/active BGP fleet end to end: a router namespace runs BIRD with ECMP (merge paths, L3+L4 hashing),
/// the client sits behind it on another subnet, and lb1–lb3 run the real merlin daemon (<c>--dataplane
/// nftables</c>, DSR, Maglev, one hash seed, one etcd) with <c>--announcer bgp</c>, each through its own
/// gobgpd. Long-lived connections stay up while lb1 is drained and stopped, while lb4 joins (the router
/// re-hashes flows onto other nodes each time: they survive because every node makes the same Maglev
/// choice), and while lb2 loses etcd for longer than its grace period.
/// </summary>
public class BgpLabTests
{
    private static readonly TimeSpan StoreGrace = TimeSpan.FromSeconds(3);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Fleet_DrainStopJoinAndStoreLoss_RoutesFollow_EveryConnectionSurvives()
    {
        Lab.Lab.Require();
        Requires.Etcd();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("gobgpd", "apt-get install gobgpd");
        Requires.Command("bird", "apt-get install bird2");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 4, RealServers = 3, Router = true, ExtraHosts = ["etcd"], IPv6 = false }, Ct);
        await lab.StartServersAsync(ct: Ct);
        var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], Ct);
        await using var bird = await LabBird.StartAsync(lab, Ct);
        var vip = lab.Vip;
        LabHost h1 = lab["lb1"], h2 = lab["lb2"], h3 = lab["lb3"], h4 = lab["lb4"];

        var daemons = new List<LabMerlin>();
        try
        {
            var lb1 = await StartAsync(h1, etcd, daemons);
            foreach (var (name, port) in new[] { ("web", Lab.Lab.HttpPort), ("echo", Lab.Lab.EchoPort) })
            {
                await lb1.MeradmAsync("service", "add", name, "tcp", $"{vip}:{port}", "-s", "mh", "-b", "mh-port");
                foreach (var rs in new[] { "rs1", "rs2", "rs3" })
                    await lb1.MeradmAsync("server", "add", name, $"{lab[rs].Address}:{port}", "-w", "1", "-f", "route");
            }
            var lb2 = await StartAsync(h2, etcd, daemons);
            var lb3 = await StartAsync(h3, etcd, daemons);
            foreach (var d in daemons) await d.WaitProgrammedAsync(2, 6, ct: Ct);
            var clock = Stopwatch.StartNew();
            await WaitHopsAsync(bird, vip, [h1, h2, h3], TimeSpan.FromSeconds(40), daemons);
            Output($"fleet up: the router has 3 next hops for {vip} {clock.ElapsedMilliseconds} ms after all three nodes were programmed");
            var status = await lb1.StatusAsync();
            Assert.Equal("bgp", status.GetProperty("announcer").GetString());
            Assert.True(status.GetProperty("announcerHealthy").GetBoolean());
            Assert.Contains(status.GetProperty("vips").EnumerateArray(), v => v.GetProperty("address").GetString() == vip.ToString() && v.GetProperty("announced").GetBoolean());
            var metrics = (await h1.ExecAsync("curl", "-s", $"http://127.0.0.1:{LabMerlin.HealthPort}/metrics")).StandardOutput;
            Assert.Contains($"merlin_vip_announced{{management=\"false\",vip=\"{vip}\"}} 1", metrics);
            Assert.Contains("merlin_node_drained 0", metrics);

            var http = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 90 }, Ct);
            Assert.True(http.Successes == 90, $"{http.Failures} of 90 requests failed through the fleet\n{await lab.DescribeAsync()}");

            // 30 long-lived connections, spread by the router over the three nodes (each node's rx counts them).
            var before = await RxAsync([h1, h2, h3]);
            await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort),
                new LabHoldOptions { Connections = 30, Duration = TimeSpan.FromSeconds(75), Timeout = TimeSpan.FromSeconds(5) });
            Assert.Equal(30, await hold.WaitConnectedAsync(ct: Ct));
            await Task.Delay(3000, Ct);
            var after = await RxAsync([h1, h2, h3]);
            var carried = before.Keys.ToDictionary(k => k, k => after[k] - before[k]);
            Output($"packets received per node while 30 connections stream: {string.Join(", ", carried.Select(c => $"{c.Key} {c.Value}"))}");
            Assert.True(carried.Values.All(n => n > 100), $"a node carried (almost) no flow: {string.Join(", ", carried.Select(c => $"{c.Key} {c.Value}"))}");

            // Drain lb1: when meradm returns, the router already routes around it — before lb1's daemon stops.
            clock.Restart();
            var drained = await lb1.MeradmAsync("node", "drain");
            var drainReturned = clock.Elapsed;
            Assert.Contains("DRAINED", drained.StandardOutput);
            TimeSpan? rerouted = null;
            while (clock.Elapsed < drainReturned + TimeSpan.FromSeconds(2))
            {
                if ((await bird.NextHopsAsync(vip)).SequenceEqual(Addresses([h2, h3]))) { rerouted = clock.Elapsed; break; }
                await Task.Delay(20, Ct);
            }
            Output($"node drain: meradm returned after {drainReturned.TotalMilliseconds:0} ms; the router's kernel had 2 next hops at {Ms(rerouted)}");
            Assert.True(rerouted is not null, $"the router still routes to lb1 2 s after the drain returned: {string.Join(", ", await bird.NextHopsAsync(vip))}");
            var ready = await h1.ExecAsync("curl", "-s", $"http://127.0.0.1:{LabMerlin.HealthPort}/readyz");
            Assert.StartsWith("not ready: the node is drained", ready.StandardOutput);
            Assert.True(lb1.Process.HasExited is false, "lb1's daemon is still running: the routes left before its dataplane could");
            await Task.Delay(1000, Ct);
            await lb1.Process.StopAsync(TimeSpan.FromSeconds(15));
            Assert.Contains("gobgpd (pid", lb1.Process.Output);
            Assert.Equal(Addresses([h2, h3]), await bird.NextHopsAsync(vip));

            // A drained node stays drained across a restart.
            await using (var again = await LabMerlin.StartAsync(h1, Options(h1, etcd), Ct))
            {
                await again.WaitProgrammedAsync(2, 6, ct: Ct);
                var s = await again.StatusAsync();
                Assert.True(s.GetProperty("nodeDrained").GetBoolean());
                await Task.Delay(2000, Ct);
                Assert.Equal(Addresses([h2, h3]), await bird.NextHopsAsync(vip));
                await again.Process.StopAsync(TimeSpan.FromSeconds(15));
            }

            // lb4 joins: the router adds it once it has programmed the services and its session is up.
            clock.Restart();
            var lb4 = await StartAsync(h4, etcd, daemons);
            await lb4.WaitProgrammedAsync(2, 6, ct: Ct);
            var programmed = clock.Elapsed;
            await WaitHopsAsync(bird, vip, [h2, h3, h4], TimeSpan.FromSeconds(40), daemons);
            Output($"join: lb4 programmed {programmed.TotalMilliseconds:0} ms after its start; in the router's ECMP route after {clock.ElapsedMilliseconds} ms (gobgpd's first connect waits 5-10 s)");
            await Task.Delay(2000, Ct);

            // lb2 loses etcd (a blackhole route to it): it keeps announcing within the grace, withdraws after it, and returns with the store.
            clock.Restart();
            await h2.IpAsync("route", "add", "blackhole", $"{lab["etcd"].Address}/32");
            TimeSpan? withdrawn = null;
            var stillAnnouncedAtGrace = false;
            while (clock.Elapsed < TimeSpan.FromSeconds(30))
            {
                var hops = await bird.NextHopsAsync(vip);
                if (!hops.Contains(h2.Address)) { withdrawn = clock.Elapsed; break; }
                if (clock.Elapsed >= StoreGrace) stillAnnouncedAtGrace = true;
                await Task.Delay(50, Ct);
            }
            Output($"store loss on lb2 (grace {StoreGrace.TotalSeconds:0} s, store timeout 1 s): its route was withdrawn {Ms(withdrawn)} after the cut");
            Assert.True(withdrawn is not null, $"lb2 never withdrew after losing etcd\n{Tail(lb2.Process.Output)}");
            Assert.True(stillAnnouncedAtGrace && withdrawn >= StoreGrace, $"lb2 withdrew after {Ms(withdrawn)}, within the grace of {StoreGrace.TotalSeconds} s");
            var warnings = (await lb2.StatusAsync()).GetProperty("warnings").EnumerateArray().Select(w => w.GetString()).ToList();
            Assert.Contains(warnings, w => w!.StartsWith("no VIP is announced: the store has been unreachable", StringComparison.Ordinal));
            clock.Restart();
            await h2.IpAsync("route", "del", "blackhole", $"{lab["etcd"].Address}/32");
            await WaitHopsAsync(bird, vip, [h2, h3, h4], TimeSpan.FromSeconds(40), daemons);
            Output($"store back on lb2: re-announced after {clock.ElapsedMilliseconds} ms");

            var report = await hold.ReportAsync(Ct);
            Output($"connections: {report.Survived}/30 survived ({string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))})");
            Assert.True(report.Survived == 30, string.Join("; ", report.Connections.Where(c => !c.Survived).Select(c => $"{c.Server}: {c.Error} at {c.FailedAtMs} ms")));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"{e}\n--- bird:\n{await bird.BirdcAsync("show", "protocols")}\n{string.Join("\n", daemons.Select(d => $"--- {d.Host.Name}:\n{Tail(d.Process.Output)}"))}\n{await lab.DescribeAsync()}");
        }
        finally
        {
            foreach (var d in daemons) await d.DisposeAsync();
        }
    }

    private static LabMerlinOptions Options(LabHost lb, string etcd) => new()
    {
        EtcdEndpoint = etcd,
        ExtraArgs =
        [
            "--announcer", "bgp", "--bgp-asn", LabBird.FleetAsn.ToString(CultureInfo.InvariantCulture), "--bgp-router-id", lb.Address.ToString(),
            "--bgp-peer", $"{lb.Lab.Router!.Address}:{LabBird.RouterAsn}", "--bgp-store-grace", $"{StoreGrace.TotalSeconds}s", "--store-timeout", "1s",
        ],
    };

    private static async Task<LabMerlin> StartAsync(LabHost lb, string etcd, List<LabMerlin> daemons)
    {
        var d = await LabMerlin.StartAsync(lb, Options(lb, etcd), Ct);
        daemons.Add(d);
        return d;
    }

    private static IReadOnlyList<IPAddress> Addresses(IEnumerable<LabHost> hosts) => hosts.Select(h => h.Address).OrderBy(a => a.ToString(), StringComparer.Ordinal).ToList();

    private static async Task WaitHopsAsync(LabBird bird, IPAddress vip, IEnumerable<LabHost> hosts, TimeSpan limit, IEnumerable<LabMerlin> daemons)
    {
        var want = Addresses(hosts);
        var clock = Stopwatch.StartNew();
        IReadOnlyList<IPAddress> have = [];
        while (!(have = await bird.NextHopsAsync(vip)).SequenceEqual(want))
        {
            if (clock.Elapsed > limit)
                Assert.Fail($"the router's next hops for {vip} are [{string.Join(", ", have)}], not [{string.Join(", ", want)}] after {limit.TotalSeconds:0} s\n{await bird.BirdcAsync("show", "protocols")}\n{string.Join("\n", daemons.Select(d => $"--- {d.Host.Name}:\n{Tail(d.Process.Output)}"))}");
            await Task.Delay(100, Ct);
        }
    }

    private static async Task<Dictionary<string, long>> RxAsync(IEnumerable<LabHost> hosts)
    {
        var counts = new Dictionary<string, long>();
        foreach (var h in hosts) counts[h.Name] = (await h.GetLinkStatsAsync()).RxPackets;
        return counts;
    }

    private static string Tail(string s, int max = 5000) => s.Length <= max ? s : "…" + s[^max..];

    private static string Ms(TimeSpan? t) => t is { } v ? $"{v.TotalMilliseconds:0} ms" : "never";

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);
}
