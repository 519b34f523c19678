using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Announcer.Tests;

/// <summary>
/// A VRRP pair end to end: lb1 and lb2 run the real merlin daemon (<c>--dataplane nftables</c>, DSR, Maglev,
/// one hash seed, one etcd) with <c>--announcer vrrp</c>, so the real keepalived (Debian's 2.2.7) holds the
/// VIPs. Long-lived connections stream through the VIP while a new service's VIP is added (a SIGHUP reload of
/// the MASTER) and while lb1's cable is cut; lb1 comes back and, with the default nopreempt, stays BACKUP.
/// Before the cut lb1's daemon is restarted MERLIN_VRRP_LAB_RESTARTS times (2 by default; the benchmark run in
/// docs/performance.md uses 20) while a client sends requests through the VIP: it adopts its keepalived.
/// </summary>
public class VrrpLabTests
{
    private const string RouterId = "51";
    /// <summary>A lab address no host has (hosts start at .10, extra hosts at .200).</summary>
    private static readonly IPAddress ManagementVip = IPAddress.Parse("198.18.0.9");
    /// <summary>
    /// Takeover after 3 silent intervals plus skew: about 1.5 + 0.3 s at 500 ms. MERLIN_LAB_VRRP_ADVERT
    /// (e.g. 1s, the daemon's default) measures another interval (docs/performance.md).
    /// </summary>
    private static readonly string AdvertInterval = Environment.GetEnvironmentVariable("MERLIN_LAB_VRRP_ADVERT") is { Length: > 0 } a ? a : "500ms";

    private static readonly int Restarts = int.TryParse(Environment.GetEnvironmentVariable("MERLIN_VRRP_LAB_RESTARTS"), CultureInfo.InvariantCulture, out var n) && n >= 0 ? n : 2;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Pair_CutTheMastersCable_Lb2HoldsBothVipsWithin4s_EveryConnectionSurvives_AndLb1ReturnsAsBackup()
    {
        Lab.Lab.Require();
        Requires.Etcd();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("keepalived", "apt-get install keepalived");
        Requires.Command("curl", "apt-get install curl");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 3, VipCount = 2, ExtraHosts = ["etcd"], IPv6 = false }, Ct);
        await lab.StartServersAsync(ct: Ct);
        var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], Ct);
        LabHost h1 = lab["lb1"], h2 = lab["lb2"];
        var vip = lab.Vip;
        var vip2 = lab.VipsV4[1];

        // lb1 first with the higher priority: it becomes MASTER alone; lb2 then joins as BACKUP.
        // The lab stops every daemon it started (and the keepalived each leaves running) when it is disposed.
        var lb1 = await LabMerlin.StartAsync(h1, Options(etcd, h2, priority: 150), Ct);
        try
        {
            foreach (var (name, port) in new[] { ("web", Lab.Lab.HttpPort), ("echo", Lab.Lab.EchoPort) })
            {
                await lb1.MeradmAsync("service", "add", name, "tcp", $"{vip}:{port}", "-s", "mh", "-b", "mh-port");
                foreach (var rs in new[] { "rs1", "rs2", "rs3" })
                    await lb1.MeradmAsync("server", "add", name, $"{lab[rs].Address}:{port}", "-w", "1", "-f", "route");
            }
            await lb1.WaitProgrammedAsync(2, 6, ct: Ct);
            await WaitAsync(async () => await StateAsync(lb1) == "MASTER" && (await AddressesAsync(h1)).IsSupersetOf([vip, ManagementVip]), "lb1 MASTER with the VIPs", lab, lb1);
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"{e}\n{await lab.DescribeAsync()}");
        }
        await using var lb2 = await LabMerlin.StartAsync(h2, Options(etcd, h1, priority: 100), Ct);
        await lb2.WaitProgrammedAsync(2, 6, ct: Ct);
        await WaitAsync(async () => await StateAsync(lb2) == "BACKUP", "lb2 BACKUP", lab, lb2);
        Assert.False((await AddressesAsync(h2)).Overlaps([vip, ManagementVip]), "lb2 holds a VIP while BACKUP");
        var http = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 60 }, Ct);
        Assert.True(http.Successes == 60, $"through lb1: {http.Failures} failures\n{await lab.DescribeAsync()}");

        await using var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.Lab.EchoPort),
            new LabHoldOptions { Connections = 20, Duration = TimeSpan.FromSeconds(25), Timeout = TimeSpan.FromSeconds(10) });
        Assert.Equal(20, await hold.WaitConnectedAsync(ct: Ct));

        // A new service's VIP: keepalived is reloaded (SIGHUP) and must not drop the VIPs it holds meanwhile.
        await lb1.MeradmAsync("service", "add", "web2", "tcp", $"{vip2}:{Lab.Lab.HttpPort}", "-s", "mh");
        await lb1.MeradmAsync("server", "add", "web2", $"{lab["rs1"].Address}:{Lab.Lab.HttpPort}", "-w", "1", "-f", "route");
        var samples = 0;
        var reload = Stopwatch.StartNew();
        while (true)
        {
            var held = await AddressesAsync(h1);
            samples++;
            Assert.True(held.IsSupersetOf([vip, ManagementVip]), $"lb1 dropped a VIP during the reload (sample {samples}): {string.Join(", ", held)}");
            if (held.Contains(vip2)) break;
            if (reload.Elapsed > TimeSpan.FromSeconds(15)) Assert.Fail($"lb1 never added {vip2}\n{Tail(lb1.Process.Output)}");
            await Task.Delay(20, Ct);
        }
        for (var i = 0; i < 10; i++, samples++)
        {
            Assert.True((await AddressesAsync(h1)).IsSupersetOf([vip, vip2, ManagementVip]), "lb1 dropped a VIP after the reload");
            await Task.Delay(50, Ct);
        }
        Assert.Contains("keepalived reloaded (SIGHUP", lb1.Process.Output, StringComparison.Ordinal);
        Assert.Equal("MASTER", await StateAsync(lb1));
        Output($"reload: {vip2} added on lb1 after {reload.ElapsedMilliseconds} ms; {samples} samples of lb1's addresses all held {vip} and {ManagementVip}");
        Assert.Equal(h1.Mac, (await lab.Client.GetNeighbourAsync(vip))?.Mac);

        // lb1's daemon restarts (SIGTERM, start): the new daemon adopts the running keepalived, so nothing moves.
        if (Restarts > 0)
        {
            var pidFile1 = Path.Combine(lab.TempPath, "state-lb1", "keepalived", "keepalived.pid");
            var kept = File.ReadAllText(pidFile1).Trim();
            var count = 20 + Restarts * 40;   // 20 a second: about 2 s per restart, bounded by count
            await using var requests = lab.Client.StartHttp(lab.VipEndpoint(), new LabRequestOptions { Count = count, Interval = TimeSpan.FromMilliseconds(50), Timeout = TimeSpan.FromSeconds(2) });
            var restartClock = Stopwatch.StartNew();
            for (var i = 0; i < Restarts; i++)
            {
                await lb1.Process.StopAsync(TimeSpan.FromSeconds(15));
                Assert.True((await AddressesAsync(h1)).IsSupersetOf([vip, vip2, ManagementVip]), $"restart {i}: lb1 dropped a VIP while its daemon was stopped");
                lb1 = await LabMerlin.StartAsync(h1, Options(etcd, h2, priority: 150), Ct);
                await WaitAsync(async () => await StateAsync(lb1) == "MASTER", $"restart {i}: lb1 MASTER again", lab, lb1);
                Assert.Contains("Adopted the keepalived a previous daemon left running", lb1.Process.Output, StringComparison.Ordinal);
                Assert.Equal(kept, File.ReadAllText(pidFile1).Trim());
                Assert.Equal("BACKUP", await StateAsync(lb2));
            }
            var restartTime = restartClock.Elapsed;
            var served = await requests.ReportAsync(Ct);
            Output($"{Restarts} restarts of lb1's daemon in {restartTime.TotalSeconds:0.0} s: keepalived {kept} adopted each time; HTTP through the VIP {served.Successes}/{served.Completed}, {served.Failures} failed");
            Assert.Equal(0, served.Failures);
            Assert.Equal(count, served.Successes);
        }

        // The cut. From here: when lb2 holds the VIP, and when the client's neighbour entry (updated by
        // keepalived's gratuitous ARP, nobody else sends one) points at lb2.
        var clock = Stopwatch.StartNew();
        await lab.SetLinkAsync(h1, up: false);
        TimeSpan? held2 = null, arp = null;
        while (clock.Elapsed < TimeSpan.FromSeconds(10) && (held2 is null || arp is null))
        {
            if (held2 is null && (await AddressesAsync(h2)).Contains(vip)) held2 = clock.Elapsed;
            if (arp is null && held2 is not null && (await lab.Client.GetNeighbourAsync(vip))?.Mac == h2.Mac) arp = clock.Elapsed;
            if (held2 is null || arp is null) await Task.Delay(10, Ct);
        }
        var reached = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 1, Timeout = TimeSpan.FromSeconds(2) }, Ct);
        var reachedAt = clock.Elapsed;
        Output($"failover (advert interval {AdvertInterval}): lb2 held {vip} {Ms(held2)} after the cut; the client's ARP entry pointed at lb2 {Ms(arp)} after; first new HTTP request through lb2 answered by {reachedAt.TotalMilliseconds:0} ms");
        Assert.True(held2 is not null && arp is not null, $"lb2 did not take over within 10 s (held {Ms(held2)}, arp {Ms(arp)})\n{await lab.DescribeAsync()}");
        Assert.True(arp < TimeSpan.FromSeconds(4), $"the client reached lb2 only {Ms(arp)} after the cut (limit 4 s)");
        Assert.Equal(1, reached.Successes);
        Assert.True((await AddressesAsync(h2)).IsSupersetOf([vip, vip2, ManagementVip]), "lb2 holds not every VIP");

        // The API on the management VIP answers from lb2; its status, metrics and readiness say MASTER.
        var status = await MeradmFromClientAsync(lab, "status", "-o", "json");
        Assert.Equal("MASTER", status.GetProperty("announcerState").GetString());
        Assert.Contains(status.GetProperty("vips").EnumerateArray(), v => v.GetProperty("address").GetString() == vip.ToString() && v.GetProperty("announced").GetBoolean());
        var metrics = (await h2.ExecAsync("curl", "-s", $"http://127.0.0.1:{LabMerlin.HealthPort}/metrics")).StandardOutput;
        Assert.Contains("merlin_announcer_state{mode=\"vrrp\",state=\"MASTER\"} 1", metrics);
        Assert.Contains($"merlin_vip_announced{{management=\"false\",vip=\"{vip}\"}} 1", metrics);
        var ready = (await h2.ExecAsync("curl", "-s", $"http://127.0.0.1:{LabMerlin.HealthPort}/readyz")).StandardOutput;
        Assert.Equal("ready (vrrp MASTER)", ready.Trim());
        var readyLb1 = (await h1.ExecAsync("curl", "-s", $"http://127.0.0.1:{LabMerlin.HealthPort}/readyz")).StandardOutput;
        // Cut off, lb1 may also have noticed the store is gone: /readyz gives every reason.
        Assert.StartsWith("not ready: ", readyLb1);
        Assert.Contains("announcer vrrp FAULT", readyLb1);

        var report = await hold.ReportAsync(Ct);
        Output($"connections: {report.Survived}/20 survived ({string.Join(", ", report.PerServer.Select(p => $"{p.Key} {p.Value}"))})");
        Assert.True(report.Survived == 20, string.Join("; ", report.Connections.Where(c => !c.Survived).Select(c => $"{c.Server}: {c.Error} at {c.FailedAtMs} ms")));

        // lb1 returns. nopreempt (the default): it hears lb2's adverts and stays BACKUP despite its higher priority.
        await lab.SetLinkAsync(h1, up: true);
        await WaitAsync(async () => await StateAsync(lb1) == "BACKUP", "lb1 BACKUP after its return", lab, lb1);
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(4))
        {
            Assert.False((await AddressesAsync(h1)).Overlaps([vip, ManagementVip]), $"lb1 took the VIPs back (preempted) although nopreempt is the policy\n{Vrrp(lb1)}\n{Vrrp(lb2)}");
            Assert.True((await AddressesAsync(h2)).Contains(vip), $"lb2 lost {vip} after lb1 returned\n{Tail(lb2.Process.Output, 12000)}");
            await Task.Delay(100, Ct);
        }
        Assert.Equal("MASTER", await StateAsync(lb2));
        Assert.Equal("BACKUP", await StateAsync(lb1));
        var after = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 30 }, Ct);
        Assert.Equal(30, after.Successes);

        // lb2 is drained: its instance goes to FAULT, which releases the VIPs and tells lb1 (priority 0), so lb1
        // takes over without waiting for its down timer. Then lb2's daemon stops; its keepalived stays in FAULT.
        var stop = Stopwatch.StartNew();
        var draining = lb2.MeradmAsync("node", "drain");
        TimeSpan? taken = null;
        while (stop.Elapsed < TimeSpan.FromSeconds(20))
        {
            if ((await AddressesAsync(h1)).Contains(vip)) { taken = stop.Elapsed; break; }
            await Task.Delay(10, Ct);
        }
        await draining;
        Output($"lb2 drained: lb1 held {vip} {Ms(taken)} after the drain was asked for (meradm's start included)");
        Assert.True(taken is not null, $"lb1 did not take the VIPs after lb2 was drained\n{Tail(lb2.Process.Output)}");
        Assert.False((await AddressesAsync(h2)).Overlaps([vip, vip2, ManagementVip]), "lb2 kept a VIP after its drain");
        await WaitAsync(async () => await StateAsync(lb2) == "FAULT", "lb2 FAULT while drained", lab, lb2);
        await lb2.Process.StopAsync(TimeSpan.FromSeconds(15));
        Assert.False((await AddressesAsync(h2)).Overlaps([vip, vip2, ManagementVip]), "lb2 took a VIP after its daemon stopped");
        Assert.Equal(30, (await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 30 }, Ct)).Successes);

        // keepalived dies under lb1's daemon: the daemon notices, restarts it after its backoff, and lb1
        // (alone now) is MASTER again with the VIPs.
        var pidFile = Path.Combine(lab.TempPath, "state-lb1", "keepalived", "keepalived.pid");
        var keepalived = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);
        Assert.True(Signal.Send(keepalived, Signal.Kill));
        var restart = Stopwatch.StartNew();
        await WaitAsync(async () => (await lb1.StatusAsync()).GetProperty("announcerRestarts").GetUInt64() == 1, "the restart counted", lab, lb1);
        await WaitAsync(async () => await StateAsync(lb1) == "MASTER" && (await AddressesAsync(h1)).IsSupersetOf([vip, vip2, ManagementVip]), "lb1 MASTER again", lab, lb1);
        Output($"keepalived killed on lb1: restarted and MASTER with the VIPs again after {restart.ElapsedMilliseconds} ms");
        Assert.NotEqual(keepalived, int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// MASTER only when programmed. lb2 (priority 100) is programmed and MASTER, still within its first election's
    /// start window, so a keepalived on lb1 (priority 150) would take the VIPs within its down interval (1.7 s).
    /// lb1's daemon starts while it cannot reach the store (a prohibit route to etcd in its namespace: the store
    /// unreachable from this node, every pass fails). Its keepalived must not start — no pid file, no keepalived
    /// process in lb1's namespace, no VIP on lb1, lb2 keeps them — sampled through its first six failed passes
    /// (6 s), and it must start only after the first programmed pass. Once the route is gone, a pass programs everything, then keepalived starts, and lb1 takes the VIPs as
    /// docs/operations.md says a higher priority does within the peer's start window — with its table
    /// programmed: requests through the VIP are answered through lb1.
    /// </summary>
    [Fact]
    public async Task StoreUnreachableAtStart_KeepalivedWaitsForAProgrammedPass_NoVipMeanwhile_ThenTheHigherPriorityJoins()
    {
        Lab.Lab.Require();
        Requires.Etcd();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("keepalived", "apt-get install keepalived");
        Requires.Command("curl", "apt-get install curl");
        var total = Stopwatch.StartNew();
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 1, VipCount = 1, ExtraHosts = ["etcd"], IPv6 = false }, Ct);
        await lab.StartServersAsync(ct: Ct);
        var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], Ct);
        LabHost h1 = lab["lb1"], h2 = lab["lb2"];
        var vip = lab.Vip;
        var etcdRoute = $"{lab["etcd"].Address}/32";
        var pidFile1 = Path.Combine(lab.TempPath, "state-lb1", "keepalived", "keepalived.pid");

        // lb2 first: programmed, then MASTER by a first election (it heard nobody), so it advertises 100 for 60 s.
        await using var lb2 = await LabMerlin.StartAsync(h2, Options(etcd, h1, priority: 100), Ct);
        await lb2.MeradmAsync("service", "add", "web", "tcp", $"{vip}:{Lab.Lab.HttpPort}", "-s", "mh");
        await lb2.MeradmAsync("server", "add", "web", $"{lab["rs1"].Address}:{Lab.Lab.HttpPort}", "-w", "1", "-f", "route");
        await lb2.WaitProgrammedAsync(1, 1, TimeSpan.FromSeconds(20), Ct);
        await WaitAsync(async () => (await AddressesAsync(h2)).IsSupersetOf([vip, ManagementVip]), "lb2 MASTER with the VIPs", lab, lb2);
        var lb2Ready = total.Elapsed;

        // The store is unreachable from lb1 only: its connections to etcd are refused by its own routing table.
        // (Not longer than needed: the reconcile loop's retry doubles from 200 ms, so the pass after the route is
        // gone comes at 3.0 or 6.2 s after the first failure.)
        await h1.IpAsync("route", "add", "prohibit", etcdRoute);
        await using var lb1 = await LabMerlin.StartAsync(h1, Options(etcd, h2, priority: 150), Ct);

        // lb1 while its passes fail: sampled until the failed pass 6.2 s after the first (the loop's retry doubles
        // from 200 ms), just seen. A keepalived started with the daemon would have written its pid file at once and
        // been MASTER 1.7 s later. The route goes right after that pass, so the next (6.4 s later, time for the etcd
        // client to reconnect) is the first to succeed: more than the 10 s any other announcer waits for a first
        // pass after the daemon's start, so a VRRP node that waited only that long is caught too (its keepalived
        // would start before the programmed pass; the order is checked below).
        var samples = 0;
        var phase = Stopwatch.StartNew();
        TimeSpan? failedAt = null;
        var failures = 0;
        while (true)
        {
            if (phase.Elapsed > TimeSpan.FromSeconds(20)) Assert.Fail($"lb1 never reported the store unreachable, or not for 5 s\n{Tail(lb1.Process.Output)}");
            var seen = Count(lb1.Process.Output, "Store unreachable");
            if (failedAt is null && seen > 0) failedAt = phase.Elapsed;
            var justFailed = seen > failures;
            failures = seen;
            if (failedAt is { } f && phase.Elapsed >= f + TimeSpan.FromSeconds(5) && justFailed) break;
            var on1 = await AddressesAsync(h1);
            var running = await KeepalivedInAsync(h1);
            samples++;
            Assert.False(on1.Overlaps([vip, ManagementVip]), $"sample {samples}: lb1 holds a VIP with its store unreachable ({string.Join(", ", on1)})\n{Tail(lb1.Process.Output)}");
            Assert.False(File.Exists(pidFile1), $"sample {samples}: lb1 wrote a keepalived pid file with its store unreachable\n{Tail(lb1.Process.Output)}");
            Assert.True(running.Count == 0, $"sample {samples}: keepalived runs in lb1's namespace (pid {string.Join(", ", running)}) with its store unreachable");
            await Task.Delay(100, Ct);
        }
        var status1 = await lb1.StatusAsync();
        Assert.False(Flag(status1, "ready"), $"lb1 ready with its store unreachable: {status1}");
        Assert.False(Flag(status1, "storeReachable"), $"{status1}");
        Assert.DoesNotContain("keepalived started", lb1.Process.Output, StringComparison.Ordinal);
        Assert.Equal("MASTER", await StateAsync(lb2));
        Assert.True((await AddressesAsync(h2)).IsSupersetOf([vip, ManagementVip]), "lb2 lost the VIPs while lb1 could not program");
        Output($"lb2 programmed and MASTER after {lb2Ready.TotalSeconds:0.0} s; store unreachable from lb1: {samples} samples over {phase.Elapsed.TotalSeconds:0.0} s ({failures} failed passes): no keepalived, no pid file, no VIP on lb1; lb1 announcer {await StateAsync(lb1)}");

        // The store comes back for lb1: a pass programs everything, and only then keepalived starts.
        await h1.IpAsync("route", "del", "prohibit", etcdRoute);
        var back = Stopwatch.StartNew();
        var unblocked = DateTime.UtcNow;
        TimeSpan? programmed = null, started = null;
        while (started is null)
        {
            if (back.Elapsed > TimeSpan.FromSeconds(25)) Assert.Fail($"lb1 never started keepalived after the store came back (programmed {Ms(programmed)})\n{Tail(lb1.Process.Output)}");
            if (programmed is null && lb1.Process.Output.Contains("Reconciled:", StringComparison.Ordinal)) programmed = back.Elapsed;
            if (File.Exists(pidFile1)) started = back.Elapsed;
            else Assert.False((await AddressesAsync(h1)).Overlaps([vip, ManagementVip]), "lb1 holds a VIP before its keepalived started");
            await Task.Delay(50, Ct);
        }
        var log1 = lb1.Process.Output;
        var pass = System.Text.RegularExpressions.Regex.Match(log1, @"Reconciled: [1-9]\d* planned, \d+ applied, 0 failed") is { Success: true } m ? m.Index : -1;
        var keepalived = log1.IndexOf("keepalived started (pid", StringComparison.Ordinal);
        Assert.True(pass >= 0 && keepalived > pass, $"keepalived started before a pass programmed everything (pass at {pass}, keepalived at {keepalived})\n{Tail(log1)}");
        Assert.True(Flag(await lb1.StatusAsync(), "ready"));

        // The election as documented: lb2 won a first election less than its start window ago and advertises 100,
        // so lb1 (150) takes the VIPs after its down interval; lb2 steps down. Requests go through lb1.
        await WaitAsync(async () => await StateAsync(lb1) == "MASTER" && (await AddressesAsync(h1)).IsSupersetOf([vip, ManagementVip]), "lb1 MASTER with the VIPs", lab, lb1);
        var master = back.Elapsed;
        await WaitAsync(async () => await StateAsync(lb2) == "BACKUP" && !(await AddressesAsync(h2)).Overlaps([vip, ManagementVip]), "lb2 BACKUP without the VIPs", lab, lb2);
        var http = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 20, Timeout = TimeSpan.FromSeconds(2) }, Ct);
        Assert.True(http.Successes == 20, $"through lb1: {http.Failures} failures\n{await lab.DescribeAsync()}");
        Assert.Equal(h1.Mac, (await lab.Client.GetNeighbourAsync(vip))?.Mac);   // the client reached the VIP at lb1
        Output($"store reachable again: lb1 programmed after {Ms(programmed)}, keepalived started after {Ms(started)}, MASTER with the VIPs after {master.TotalMilliseconds:0} ms; 20/20 requests through lb1; test {total.Elapsed.TotalSeconds:0.0} s");
        Output($"lb1's log (route removed at {unblocked:HH:mm:ss.fff}):\n" + string.Join('\n', lb1.Process.Output.Split('\n').Where(l =>
            l.Contains("Store unreachable", StringComparison.Ordinal) || l.Contains("Reconciled:", StringComparison.Ordinal) || l.Contains("keepalived started", StringComparison.Ordinal)
            || l.Contains("listening: API", StringComparison.Ordinal) || l.Contains("VRRP merlin_51", StringComparison.Ordinal)).Select(l => l.Length > 200 ? l[..200] : l)));
    }

    private static LabMerlinOptions Options(string etcd, LabHost peer, int priority) => new()
    {
        EtcdEndpoint = etcd,
        ExtraArgs =
        [
            "--announcer", "vrrp", "--vrrp-router-id", RouterId, "--vrrp-priority", priority.ToString(CultureInfo.InvariantCulture),
            "--vrrp-peer", peer.Address.ToString(), "--management-vip", ManagementVip.ToString(), "--vrrp-advert-interval", AdvertInterval,
            // The API on every address of the namespace, so the management VIP reaches it (a lab: no TLS).
            "--listen-address", "0.0.0.0", "--allow-insecure",
        ],
    };

    private static async Task<string?> StateAsync(LabMerlin daemon)
    {
        var s = await daemon.StatusAsync();
        return s.TryGetProperty("announcerState", out var state) ? state.GetString() : null;
    }

    private static async Task<JsonElement> MeradmFromClientAsync(Lab.Lab lab, params string[] args)
    {
        var r = await lab.Client.RunAsync([.. LabMerlin.Meradm(), .. args, "-H", $"{ManagementVip}:{LabMerlin.ApiPort}"], TimeSpan.FromSeconds(60));
        if (!r.Succeeded) throw new LabCommandException(r);
        using var doc = JsonDocument.Parse(r.StandardOutput);
        return doc.RootElement.Clone();
    }

    private static int Count(string text, string what)
    {
        var n = 0;
        for (var i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + what.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>A boolean of <c>meradm status -o json</c> (false is left out).</summary>
    private static bool Flag(JsonElement status, string name) => status.TryGetProperty(name, out var v) && v.GetBoolean();

    /// <summary>The PIDs of keepalived processes in the host's namespace.</summary>
    private static async Task<List<int>> KeepalivedInAsync(LabHost host)
    {
        var r = await host.ExecAsync("ip", "netns", "pids", host.Namespace);
        var found = new List<int>();
        foreach (var line in r.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(line, CultureInfo.InvariantCulture, out var pid)) continue;
            try { if (File.ReadAllText($"/proc/{pid}/comm").Trim() == "keepalived") found.Add(pid); }
            catch (IOException) { } // gone meanwhile
        }
        return found;
    }

    /// <summary>The IPv4 addresses on the host's lab interface.</summary>
    private static async Task<HashSet<IPAddress>> AddressesAsync(LabHost host)
    {
        var r = await host.IpAsync("-j", "-4", "addr", "show", "dev", host.Interface);
        using var doc = JsonDocument.Parse(r.StandardOutput);
        return doc.RootElement.EnumerateArray()
            .SelectMany(i => i.GetProperty("addr_info").EnumerateArray())
            .Select(a => IPAddress.Parse(a.GetProperty("local").GetString()!))
            .ToHashSet();
    }

    private static async Task WaitAsync(Func<Task<bool>> condition, string what, Lab.Lab lab, LabMerlin daemon)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(30))
                Assert.Fail($"timed out waiting for {what}\n{Tail(daemon.Process.Output)}\n{await lab.DescribeAsync()}");
            await Task.Delay(100, Ct);
        }
    }

    private static string Vrrp(LabMerlin d) => string.Join('\n', d.Process.Output.Split('\n').Where(l => l.Contains("VRRP", StringComparison.Ordinal) || l.Contains("priority", StringComparison.OrdinalIgnoreCase) || l.Contains("Entering", StringComparison.Ordinal)));

    private static string Tail(string s, int max = 6000) => s.Length <= max ? s : "…" + s[^max..];

    private static string Ms(TimeSpan? t) => t is { } v ? $"{v.TotalMilliseconds:0} ms" : "never";

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);
}
