using System.Diagnostics;
using System.Net;
using Merlin.Announcer.Bgp;
using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Announcer.Tests;

/// <summary>
/// The BGP announcer against the real gobgpd (Debian's 3.10) in a load balancer's namespace, peering with
/// BIRD on the lab's router: what the router's kernel routes to is what the announcer was told, a restart
/// of gobgpd is repaired, and stopping withdraws every route before gobgpd goes.
/// </summary>
public class GobgpAnnouncerTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Announces_Withdraws_SurvivesAKilledGobgpd_AndWithdrawsEverythingOnStop()
    {
        Lab.Lab.Require();
        Requires.Command("gobgpd", "apt-get install gobgpd");
        Requires.Command("bird", "apt-get install bird2");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = 0, VipCount = 2, Router = true }, Ct);
        await using var bird = await LabBird.StartAsync(lab, Ct);
        var lb = lab["lb1"];
        var logs = new ListLoggerFactory();
        var options = new BgpOptions
        {
            LocalAsn = LabBird.FleetAsn,
            RouterId = lb.Address,
            Peers = [new BgpPeer(lab.Router!.Address, LabBird.RouterAsn), new BgpPeer(lab.Router.Address6!, LabBird.RouterAsn)],
            StateDir = Path.Combine(lab.TempPath, "gobgp-lb1"),
            NetworkNamespace = lb.Namespace,
        };
        var announcer = new GobgpAnnouncer(options, logs);
        try
        {
            IPAddress v4 = lab.VipsV4[0], v4b = lab.VipsV4[1], v6 = lab.Vip6!;
            await announcer.AnnounceAsync([v4, v6], Ct);
            await announcer.StartAsync(Ct);
            await WaitAsync(async () => (await bird.NextHopsAsync(v4)).SequenceEqual([lb.Address]) && (await bird.NextHopsAsync(v6)).SequenceEqual([lb.Address6!]),
                "the router routes both VIPs to lb1", TimeSpan.FromSeconds(30), bird, logs);
            await WaitAsync(() => Task.FromResult(announcer.State.Healthy && announcer.State.Vips.All(v => v.Announced)), "the state says announced", TimeSpan.FromSeconds(5), bird, logs);
            Assert.Equal("bgp", announcer.State.Mode);
            Assert.Contains("2/2 sessions established", announcer.State.Detail);

            // A new set: the other IPv4 VIP in, the IPv6 one out; the route that stays is not touched.
            await announcer.AnnounceAsync([v4b, v4], Ct);
            await WaitAsync(async () => (await bird.NextHopsAsync(v4b)).Count == 1 && (await bird.NextHopsAsync(v6)).Count == 0,
                "v4b announced, v6 withdrawn", TimeSpan.FromSeconds(10), bird, logs);
            Assert.Single(await bird.NextHopsAsync(v4));
            Assert.DoesNotContain(logs.Lines, l => l.Contains($"Withdrew {v4}", StringComparison.Ordinal));

            // gobgpd dies: the supervisor starts another and replays the routes.
            var pid = announcer.Pid!.Value;
            Assert.True(Signal.Send(pid, Signal.Kill));
            await WaitAsync(() => Task.FromResult(announcer.State.Restarts == 1 && announcer.Pid is { } p && p != pid), "gobgpd restarted", TimeSpan.FromSeconds(15), bird, logs);
            await WaitAsync(async () => (await bird.NextHopsAsync(v4)).Count == 1 && (await bird.NextHopsAsync(v4b)).Count == 1,
                "the routes are back after the restart", TimeSpan.FromSeconds(30), bird, logs);

            // Stop: the routes leave the router before gobgpd is gone.
            var clock = Stopwatch.StartNew();
            await announcer.StopAsync(Ct);
            Assert.Empty(await bird.NextHopsAsync(v4));
            Assert.Empty(await bird.NextHopsAsync(v4b));
            Assert.Contains(logs.Lines, l => l.Contains("Withdrew all 2 routes; the established peers were told", StringComparison.Ordinal));
            TestContext.Current.SendDiagnosticMessage($"stop withdrew both routes from the router in {clock.ElapsedMilliseconds} ms");
            Assert.False(announcer.State.Healthy);
            Assert.Null(announcer.Pid);
            Assert.False(File.Exists(options.PidPath));
        }
        finally
        {
            await announcer.DisposeAsync();
        }
    }

    private static async Task WaitAsync(Func<Task<bool>> condition, string what, TimeSpan limit, LabBird bird, ListLoggerFactory logs)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > limit)
                Assert.Fail($"{what}: not within {limit.TotalSeconds:0} s\n--- bird protocols:\n{await bird.BirdcAsync("show", "protocols")}\n--- merlin log:\n{logs.Text}\n--- bird log:\n{Tail(bird.Process.Output)}");
            await Task.Delay(100, Ct);
        }
    }

    private static string Tail(string s, int max = 4000) => s.Length <= max ? s.TrimEnd() : "…" + s[^max..].TrimEnd();
}
