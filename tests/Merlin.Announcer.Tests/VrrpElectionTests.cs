using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Merlin.Announcer.Vrrp;
using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Announcer.Tests;

/// <summary>
/// The election with the real keepalived (Debian's 2.2.7), driven by <see cref="KeepalivedAnnouncer"/> in-process:
/// two lab load balancers (priorities 150 and 100, 500 ms adverts, default no-preempt policy), each with its own
/// keepalived in its namespace (<c>-s</c>). Repeated <see cref="Repetitions"/> times (MERLIN_VRRP_REPEAT; 20 by
/// default, in CI too): each repetition is one cold start or one daemon restart, so the counts are what
/// docs/operations.md states.
/// </summary>
public class VrrpElectionTests
{
    private static readonly IPAddress ManagementVip = IPAddress.Parse("198.18.0.9");
    private static readonly TimeSpan Advert = TimeSpan.FromMilliseconds(500);
    private static readonly int Repetitions = int.TryParse(Environment.GetEnvironmentVariable("MERLIN_VRRP_REPEAT"), CultureInfo.InvariantCulture, out var n) && n > 0 ? n : 20;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// Both nodes cold-start in every order, up to 2 s apart, while both are told a new set of service VIPs every
    /// 200 ms: every repetition ends with the priority-150 node MASTER holding the current set, and no keepalived
    /// was ever set back to "BACKUP (init)" after its start (which is what a reload of a BACKUP does).
    /// </summary>
    [Fact]
    public async Task ColdStart_AnyOrderAndTiming_WithTheVipSetChangingEvery200ms_TheHigherPriorityEndsMaster()
    {
        await using var pair = await PairAsync();
        var results = new List<string>();
        var rng = new Random(22);
        for (var rep = 0; rep < Repetitions; rep++)
        {
            // Lower first on even repetitions, higher first on odd ones; the gap cycles through 0–2 s.
            var gap = TimeSpan.FromMilliseconds(rep / 2 % 5 * 500);
            var higherFirst = rep % 2 == 1;
            var logs = new[] { new ListLoggerFactory(), new ListLoggerFactory() };
            var lb1 = new KeepalivedAnnouncer(pair.Options(0, 150), logs[0]);
            var lb2 = new KeepalivedAnnouncer(pair.Options(1, 100), logs[1]);
            var clock = Stopwatch.StartNew();
            IReadOnlyList<IPAddress> last = [];
            try
            {
                using var churning = new CancellationTokenSource();
                var churn = Task.Run(async () =>
                {
                    // Bounded: at most 100 changes (20 s), ended as soon as the election is settled.
                    for (var i = 0; i < 100 && !churning.IsCancellationRequested; i++)
                    {
                        var set = Enumerable.Range(0, 10).Where(_ => rng.Next(2) == 0).Select(k => IPAddress.Parse($"198.18.0.{100 + k}")).ToList();
                        await lb1.AnnounceAsync(set, Ct);
                        await lb2.AnnounceAsync(set, Ct);
                        last = set;
                        try { await Task.Delay(200, churning.Token); } catch (OperationCanceledException) { }
                    }
                }, Ct);
                var (first, second) = higherFirst ? (lb1, lb2) : (lb2, lb1);
                await first.StartAsync(Ct);
                await Task.Delay(gap, Ct);
                await second.StartAsync(Ct);
                // The later node's first election is over after its down interval; a preemption one more after that.
                await WaitAsync(() => lb1.State.Role == AnnouncerRole.Master && lb2.State.Role == AnnouncerRole.Backup, TimeSpan.FromSeconds(15),
                    () => $"repetition {rep} (gap {gap.TotalSeconds} s, {(higherFirst ? "150" : "100")} first): lb1 {lb1.State.RoleName}, lb2 {lb2.State.RoleName}\n{logs[0].Text}\n{logs[1].Text}");
                var settled = clock.Elapsed;
                await Task.Delay(500, Ct); // more churn while settled: it stays so
                await churning.CancelAsync();
                await churn;
                Assert.Equal(AnnouncerRole.Master, lb1.State.Role);
                Assert.Equal(AnnouncerRole.Backup, lb2.State.Role);
                // The MASTER holds the last set (a reload while MASTER), the BACKUP none.
                var want = VipSet.Normalize([.. last, ManagementVip]);
                await WaitAsync(async () => VipSet.Normalize(await AddressesAsync(pair.Lab, 0)).SequenceEqual(want), TimeSpan.FromSeconds(5),
                    () => $"repetition {rep}: lb1 does not hold {string.Join(", ", want)}\n{logs[0].Text}");
                Assert.Empty(await AddressesAsync(pair.Lab, 1));
                foreach (var log in logs)
                    Assert.True(log.Lines.Count(l => l.Contains("Entering BACKUP STATE (init)", StringComparison.Ordinal)) <= 1, $"repetition {rep}: a keepalived was set back to BACKUP (init)\n{log.Text}");
                results.Add($"{rep}: {(higherFirst ? "150" : "100")} first, gap {gap.TotalSeconds:0.0} s: 150 MASTER after {settled.TotalSeconds:0.0} s; reloads lb1 {lb1.Reloads}, lb2 {lb2.Reloads}");
            }
            finally
            {
                await lb1.ReleaseAsync(CancellationToken.None);
                await lb2.ReleaseAsync(CancellationToken.None);
            }
        }
        foreach (var r in results) Output(r);
        Output($"higher priority MASTER in {results.Count}/{Repetitions} cold starts");
        Assert.Equal(Repetitions, results.Count);
    }

    /// <summary>
    /// The MASTER's daemon restarts <see cref="Repetitions"/> times (its announcer stops, a new one adopts the running
    /// keepalived): the VIPs never leave it (sampled every 20 ms), the BACKUP never takes them, and HTTP requests
    /// through the VIP to a server on lb1 all succeed. Then the last restarted primary shows the other rule: a node
    /// that returns while the peer keeps the VIPs (nopreempt after the first election) stays BACKUP.
    /// </summary>
    [Fact]
    public async Task DaemonRestartOnTheMaster_AdoptsKeepalived_VipsNeverMove_NoRequestFails_AndAReturningPrimaryStaysBackup()
    {
        await using var pair = await PairAsync();
        await pair.Lab.LoadBalancers[0].StartServerAsync(ct: Ct);
        await pair.Lab.LoadBalancers[1].StartServerAsync(ct: Ct);
        var vips = new[] { IPAddress.Parse("198.18.0.100") };
        var lb1 = new KeepalivedAnnouncer(pair.Options(0, 150), new ListLoggerFactory());
        var lb2 = new KeepalivedAnnouncer(pair.Options(1, 100), new ListLoggerFactory());
        try
        {
            await lb1.AnnounceAsync(vips, Ct);
            await lb2.AnnounceAsync(vips, Ct);
            await lb1.StartAsync(Ct);
            await lb2.StartAsync(Ct);
            await WaitAsync(() => lb1.State.Role == AnnouncerRole.Master && lb2.State.Role == AnnouncerRole.Backup, TimeSpan.FromSeconds(15), () => "lb1 MASTER");
            var pid = lb1.Pid;
            var target = new IPEndPoint(vips[0], Lab.Lab.HttpPort);
            // Bounded: 20 requests a second, before, during and after the restarts (a second and a half of each).
            await using var http = pair.Lab.Client.StartHttp(target, new LabRequestOptions { Count = 60 + Repetitions * 6, Interval = TimeSpan.FromMilliseconds(50), Timeout = TimeSpan.FromSeconds(2) });
            await Task.Delay(1500, Ct);
            var samples = 0;
            var restarts = Stopwatch.StartNew();
            for (var rep = 0; rep < Repetitions; rep++)
            {
                await lb1.StopAsync(Ct);
                var held = await AddressesAsync(pair.Lab, 0);
                samples++;
                Assert.True(held.Contains(vips[0]) && held.Contains(ManagementVip), $"restart {rep}: lb1 dropped a VIP while no daemon ran");
                lb1 = new KeepalivedAnnouncer(pair.Options(0, 150), new ListLoggerFactory());
                await lb1.AnnounceAsync(vips, Ct);
                await lb1.StartAsync(Ct);
                Assert.True(lb1.Adopted, $"restart {rep}: not adopted");
                Assert.Equal(pid, lb1.Pid);
                var learn = Stopwatch.StartNew();
                while (lb1.State.Role != AnnouncerRole.Master)
                {
                    Assert.True(learn.Elapsed < TimeSpan.FromSeconds(5), $"restart {rep}: the adopted keepalived's state never came ({lb1.State.RoleName})");
                    held = await AddressesAsync(pair.Lab, 0);
                    samples++;
                    Assert.True(held.Contains(vips[0]) && held.Contains(ManagementVip), $"restart {rep}: lb1 dropped a VIP during the adoption");
                    await Task.Delay(20, Ct);
                }
                Assert.Equal(AnnouncerRole.Backup, lb2.State.Role);
                Assert.Empty(await AddressesAsync(pair.Lab, 1));
            }
            var restartTime = restarts.Elapsed;
            var report = await http.ReportAsync(Ct);
            Output($"{Repetitions} restarts of lb1's announcer in {restartTime.TotalSeconds:0.0} s: keepalived pid {pid} adopted every time; {samples} samples of lb1's addresses all held the VIPs; HTTP {report.Successes}/{report.Completed} ok, {report.Failures} failed ({string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))})");
            Assert.Equal(0, report.Failures);
            Assert.Equal(60 + Repetitions * 6, report.Successes);
            Assert.Equal(["lb1"], report.PerServer.Keys);
            Assert.Equal(0, lb1.State.Restarts);

            // The primary fails for good (keepalived stopped): lb2 takes over after having heard it, so it keeps the
            // VIPs; the primary returns and stays BACKUP (nopreempt after the first election).
            await lb1.ReleaseAsync(Ct);
            await WaitAsync(() => lb2.State.Role == AnnouncerRole.Master, TimeSpan.FromSeconds(10), () => "lb2 took over");
            lb1 = new KeepalivedAnnouncer(pair.Options(0, 150), new ListLoggerFactory());
            await lb1.AnnounceAsync(vips, Ct);
            await lb1.StartAsync(Ct);
            Assert.False(lb1.Adopted);
            await WaitAsync(() => lb1.State.Role == AnnouncerRole.Backup, TimeSpan.FromSeconds(10), () => "lb1 BACKUP");
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < TimeSpan.FromSeconds(4))
            {
                Assert.Equal(AnnouncerRole.Backup, lb1.State.Role);
                Assert.Contains(vips[0], await AddressesAsync(pair.Lab, 1));
                await Task.Delay(200, Ct);
            }
            Assert.Contains("priority 254", lb2.State.Detail, StringComparison.Ordinal);
        }
        finally
        {
            await lb1.ReleaseAsync(CancellationToken.None);
            await lb2.ReleaseAsync(CancellationToken.None);
        }
    }

    private sealed class Pair(Lab.Lab lab) : IAsyncDisposable
    {
        public Lab.Lab Lab { get; } = lab;

        public VrrpOptions Options(int lb, int priority)
        {
            var host = Lab.LoadBalancers[lb];
            return new VrrpOptions
            {
                Interface = host.Interface,
                RouterId = 51,
                Priority = priority,
                Peers = [Lab.LoadBalancers[1 - lb].Address],
                ManagementVip = ManagementVip,
                AdvertInterval = Advert,
                StartWindow = TimeSpan.FromSeconds(30),
                StateDir = Path.Combine(Lab.TempPath, $"keepalived-{host.Name}"),
                NetworkNamespace = host.Namespace,
            };
        }

        public ValueTask DisposeAsync() => Lab.DisposeAsync();
    }

    private static async Task<Pair> PairAsync()
    {
        Lab.Lab.Require();
        Requires.Command("keepalived", "apt-get install keepalived");
        return new Pair(await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 0, IPv6 = false }, Ct));
    }

    /// <summary>The IPv4 addresses on a load balancer's lab interface, without its own.</summary>
    private static async Task<HashSet<IPAddress>> AddressesAsync(Lab.Lab lab, int lb)
    {
        var host = lab.LoadBalancers[lb];
        var r = await host.IpAsync("-j", "-4", "addr", "show", "dev", host.Interface);
        using var doc = JsonDocument.Parse(r.StandardOutput);
        return doc.RootElement.EnumerateArray()
            .SelectMany(i => i.GetProperty("addr_info").EnumerateArray())
            .Select(a => IPAddress.Parse(a.GetProperty("local").GetString()!))
            .Where(a => !a.Equals(host.Address))
            .ToHashSet();
    }

    private static Task WaitAsync(Func<bool> condition, TimeSpan limit, Func<string> what) => Poll.UntilAsync(condition, "the election", limit, what, ct: Ct);

    private static Task WaitAsync(Func<Task<bool>> condition, TimeSpan limit, Func<string> what) => Poll.UntilAsync(condition, "the election", limit, what, ct: Ct);

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);
}
