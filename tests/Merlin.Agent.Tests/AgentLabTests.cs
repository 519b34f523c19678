using System.Net;
using Merlin.Lab;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>
/// The real-server agent with the real daemon in the lab: bare real servers (no VIP, kernel ARP defaults)
/// attached by <c>merlin-agent</c>, which reaches the daemon's API over mutual TLS on the load balancer's
/// address with a realserver certificate for its own IP.
/// </summary>
public sealed class AgentLabTests
{
    private const string DrainPeriod = "2s";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static ITestOutputHelper? Out => TestContext.Current.TestOutputHelper;

    [Fact]
    public async Task RollingRestartThroughTheAgents_AndADaemonRestart_FailNoRequest()
    {
        Lab.Lab.Require();
        Requires.Command("nft", "apt-get install nftables");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = 3, IPv6 = false, VipsOnRealServers = false }, Ct);
        using var pki = new TestPki("Merlin Lab CA");
        var lb1 = lab["lb1"];
        var daemonOptions = new LabMerlinOptions { Tls = Tls(pki, lb1) };
        var lb = await LabMerlin.StartAsync(lb1, daemonOptions, Ct);
        try
        {
            await lb.MeradmAsync("service", "add", "web", "tcp", $"{lab.Vip}:{Lab.Lab.HttpPort}", "-s", "mh", "-b", "mh-port");
            var servers = (await lab.StartServersAsync(ct: Ct)).ToArray();
            var agents = new LabProcess[lab.RealServers.Count];
            for (var i = 0; i < agents.Length; i++) agents[i] = await StartAgentAsync(lab, pki, lab.RealServers[i], lb1);
            await lb.WaitProgrammedAsync(1, 3, ct: Ct);
            foreach (var rs in lab.RealServers) await WaitWeightAsync(lb, rs, 1, 0);
            await lab.AssignVipAsync(lb1, Ct);
            var warmup = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 90 }, Ct);
            Assert.True(warmup.Successes == 90 && warmup.PerServer.Count == 3, $"before the restarts: {Describe(warmup)}");

            // 2,000 short requests, one every 30 ms: at least 60 s, longer than the restarts below take
            // (about 30 s on a busy 2-core machine).
            await using var loop = lab.Client.StartHttp(lab.VipEndpoint(), new LabRequestOptions { Count = 2000, Interval = TimeSpan.FromMilliseconds(30), Timeout = TimeSpan.FromSeconds(2) });
            await Task.Delay(2000, Ct);
            var timeline = new List<string>();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            for (var i = 0; i < agents.Length; i++)
            {
                var rs = lab.RealServers[i];
                // SIGTERM: the agent drains, waits the drain period, deletes itself, and detaches.
                Assert.True(agents[i].SendSignal(Signal.Term));
                Assert.Equal(0, await agents[i].WaitForExitAsync(TimeSpan.FromSeconds(60), Ct));
                Assert.Contains(agents[i].Output.Split('\n'), l => l.Contains("Detached", StringComparison.Ordinal));
                Assert.DoesNotContain(lab.Vip.ToString(), (await rs.ExecAsync("ip", "-o", "addr", "show", "dev", "lo")).StandardOutput);
                Assert.Equal("0", await rs.GetSysctlAsync("net.ipv4.conf.all.arp_ignore"));
                Assert.Equal("0", await rs.GetSysctlAsync("net.ipv4.conf.all.arp_announce"));
                timeline.Add($"{clock.Elapsed.TotalSeconds:0.0}s {rs.Name} detached");
                // The ingress node restarts: its server, then its agent.
                await servers[i].KillAsync();
                await servers[i].DisposeAsync();
                servers[i] = await rs.StartServerAsync(ct: Ct);
                var mark = lb.Process.LineCount;
                agents[i] = await StartAgentAsync(lab, pki, rs, lb1);
                await WaitWeightAsync(lb, rs, 1, mark);
                timeline.Add($"{clock.Elapsed.TotalSeconds:0.0}s {rs.Name} back at weight 1");

                if (i == 0)
                {
                    // The daemon is killed outright and started again: the table it left keeps serving,
                    // and the new daemon programs nothing (no weight to 0 while its checks have no verdict).
                    await lb.Process.KillAsync();
                    await lb.DisposeAsync();
                    timeline.Add($"{clock.Elapsed.TotalSeconds:0.0}s daemon killed");
                    lb = await LabMerlin.StartAsync(lb1, daemonOptions, Ct);
                    await lb.WaitProgrammedAsync(1, 3, ct: Ct);
                    // Three periods of checks: every verdict is in, and changed nothing.
                    await Task.Delay(1500, Ct);
                    var applied = lb.Process.Output.Split('\n').Where(l => l.Contains("Applied: ", StringComparison.Ordinal)).ToList();
                    Assert.True(applied.Count == 0, "the restarted daemon changed the table:\n" + string.Join('\n', applied));
                    timeline.Add($"{clock.Elapsed.TotalSeconds:0.0}s daemon back, table untouched");
                }
            }
            var restarts = clock.Elapsed;
            Assert.False(loop.Process.HasExited, $"the rolling restart ({restarts.TotalSeconds:0} s) outlasted the request loop; timeline:\n{string.Join('\n', timeline)}");
            var report = await loop.ReportAsync(Ct);
            Out?.WriteLine($"rolling restart of 3 servers + daemon kill/restart in {restarts.TotalSeconds:0.0} s, during 2,000 requests over {report.ElapsedMs / 1000.0:0.0} s: {Describe(report)}\n{string.Join('\n', timeline)}");
            Assert.Equal(2000, report.Completed);
            Assert.True(report.Failures == 0, $"{Describe(report)}\n{string.Join('\n', timeline)}");
            Assert.Equal(3, report.PerServer.Count);
        }
        finally
        {
            await lb.DisposeAsync();
        }
    }

    [Fact]
    public async Task AnAgentKilledMidDrain_AndStartedAgain_EndsTheDrain_AndStillRestoresTheOriginalSysctls()
    {
        Lab.Lab.Require();
        Requires.Command("nft", "apt-get install nftables");
        await using var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = 1, IPv6 = false, VipsOnRealServers = false }, Ct);
        using var pki = new TestPki("Merlin Lab CA");
        var lb1 = lab["lb1"];
        var rs1 = lab.RealServers[0];
        await using var lb = await LabMerlin.StartAsync(lb1, new LabMerlinOptions { Tls = Tls(pki, lb1) }, Ct);
        await lb.MeradmAsync("service", "add", "web", "tcp", $"{lab.Vip}:{Lab.Lab.HttpPort}", "-s", "mh", "-b", "mh-port");
        await using var server = await rs1.StartServerAsync(ct: Ct);
        // The operator's own choice, which the agent must give back: arp_announce 1.
        await rs1.SetSysctlAsync("net.ipv4.conf.all.arp_announce", "1");

        var agent = await StartAgentAsync(lab, pki, rs1, lb1, drainPeriod: "60s");
        await WaitWeightAsync(lb, rs1, 1, 0);
        // SIGTERM starts a 60 s drain; the agent is then killed before it can finish.
        var mark = lb.Process.LineCount;
        agent.SendSignal(Signal.Term);
        await lb.Process.WaitForLineAsync(l => l.Contains($"server {rs1.Address}:80", StringComparison.Ordinal) && l.Contains("(weight 0", StringComparison.Ordinal), TimeSpan.FromSeconds(20), mark, Ct);
        await agent.KillAsync();
        await agent.DisposeAsync();
        Assert.Equal("2", await rs1.GetSysctlAsync("net.ipv4.conf.all.arp_announce")); // still attached

        // Started again: it finds its server registered and draining, and ends the drain.
        mark = lb.Process.LineCount;
        agent = await StartAgentAsync(lab, pki, rs1, lb1, drainPeriod: "1s");
        await WaitWeightAsync(lb, rs1, 1, mark);
        var list = await lb.MeradmAsync("list", "-o", "json");
        Assert.Contains("\"drainDeadline\": null", list.StandardOutput, StringComparison.Ordinal);

        agent.SendSignal(Signal.Term);
        Assert.Equal(0, await agent.WaitForExitAsync(TimeSpan.FromSeconds(30), Ct));
        await agent.DisposeAsync();
        // The values from before the first attach, not the agent's own from the second.
        Assert.Equal("1", await rs1.GetSysctlAsync("net.ipv4.conf.all.arp_announce"));
        Assert.Equal("0", await rs1.GetSysctlAsync("net.ipv4.conf.all.arp_ignore"));
        Assert.DoesNotContain(lab.Vip.ToString(), (await rs1.ExecAsync("ip", "-o", "addr", "show", "dev", "lo")).StandardOutput);
        await lb.WaitProgrammedAsync(1, 0, ct: Ct);
    }

    private static LabMerlinTls Tls(TestPki pki, LabHost lb)
    {
        var (cert, key) = pki.WritePem(pki.Server(lb.Address), $"merlin-{lb.Name}");
        return new LabMerlinTls(cert, key, pki.CaFile);
    }

    /// <summary>Starts merlin-agent on a real server with a realserver certificate for its address; returns once it has registered.</summary>
    private static async Task<LabProcess> StartAgentAsync(Lab.Lab lab, TestPki pki, LabHost rs, LabHost lb, string drainPeriod = DrainPeriod)
    {
        var (cert, key) = pki.WritePem(pki.Client($"agent-{rs.Name}", "realserver", rs.Address), $"agent-{rs.Name}");
        var agent = rs.Start([.. LabMerlin.Agent(),
            "--api", $"{lb.Address}:{LabMerlin.ApiPort}", "--ca", pki.CaFile, "--cert", cert, "--key", key,
            "--service", "web", "--address", rs.Address.ToString(), "--weight", "1",
            "--health-endpoint", $"http://:{Lab.Lab.HttpPort}/healthz", "--health-period", "500ms", "--health-timeout", "400ms",
            "--health-up", "2", "--health-down", "2",
            "--drain-period", drainPeriod, "--state-dir", Path.Combine(lab.TempPath, $"agent-{rs.Name}")]);
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

    private static async Task WaitWeightAsync(LabMerlin lb, LabHost rs, int weight, int fromLine) =>
        await lb.Process.WaitForLineAsync(
            l => l.Contains("Applied: ", StringComparison.Ordinal) && l.Contains($" server {rs.Address}:80 ", StringComparison.Ordinal) && l.Contains($"(weight {weight}", StringComparison.Ordinal),
            TimeSpan.FromSeconds(30), fromLine, Ct);

    private static string Describe(Merlin.Lab.Server.RequestReport r) =>
        $"{r.Successes}/{r.Completed} ok, per server {string.Join(", ", r.PerServer.Select(p => $"{p.Key} {p.Value}"))}"
        + (r.Failures == 0 ? "" : $"; failures {string.Join(", ", r.Errors.Select(e => $"{e.Key} {e.Value}"))}; first {string.Join("; ", r.FirstFailures.Take(5).Select(f => $"{f.AtMs} ms {f.Error}"))}");
}
