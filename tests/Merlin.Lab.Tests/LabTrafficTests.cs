using System.Net;
using Merlin.Lab.Server;

namespace Merlin.Lab.Tests;

/// <summary>The default lab (client, one LB, three real servers) carries real HTTP, TCP and UDP traffic.</summary>
public sealed class LabTrafficTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void Log(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    [Fact]
    public async Task Client_reaches_each_real_server_directly_over_IPv4_and_IPv6()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(ct: Ct);
        Log($"lab setup took {lab.SetupTime.TotalMilliseconds:0} ms");
        Assert.True(lab.SetupTime < TimeSpan.FromSeconds(5), $"lab setup took {lab.SetupTime}");
        Assert.Equal(["rs1", "rs2", "rs3"], lab.RealServers.Select(h => h.Name));
        Assert.Equal("lb1", Assert.Single(lab.LoadBalancers).Name);
        await lab.StartServersAsync(ct: Ct);

        var runs = lab.RealServers.SelectMany(rs => new[] { false, true }.Select(async ipv6 =>
        {
            var r = await lab.Client.HttpAsync(rs.Endpoint(Lab.HttpPort, ipv6), new LabRequestOptions { Count = 20, Concurrency = 2 }, Ct);
            return (rs, ipv6, r);
        }));
        var lbBefore = await lab["lb1"].GetLinkStatsAsync();
        var rs1Before = await lab["rs1"].GetLinkStatsAsync();
        foreach (var (rs, ipv6, r) in await Task.WhenAll(runs))
        {
            Assert.True(r.Successes == 20, $"{rs.Name} ipv6={ipv6}: {ReportJson.Write(r)}");
            Assert.Equal(new Dictionary<string, int> { [rs.Name] = 20 }, r.PerServer);
            Assert.Equal(20, r.StatusCodes["200"]);
        }
        // Counters see the traffic: rs1 answered 40 connections (each several packets); lb1 carried none of it
        // (at most a flooded broadcast or multicast frame).
        var rs1After = await lab["rs1"].GetLinkStatsAsync();
        Assert.True(rs1After.TxPackets - rs1Before.TxPackets >= 40 * 3, $"{rs1Before} → {rs1After}");
        Assert.True((await lab["lb1"].GetLinkStatsAsync()).RxPackets - lbBefore.RxPackets < 20);
    }

    [Fact]
    public async Task Echo_server_keeps_long_lived_connections_and_names_itself()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(ct: Ct);
        await lab.StartServersAsync(ct: Ct);
        var rs2 = lab["rs2"];

        var report = await lab.Client.HoldAsync(rs2.Endpoint(Lab.EchoPort), new LabHoldOptions
        {
            Connections = 5, Interval = TimeSpan.FromMilliseconds(100), Duration = TimeSpan.FromSeconds(1),
        }, Ct);
        Assert.True(report.Survived == 5, ReportJson.Write(report));
        Assert.Equal(0, report.Failed);
        Assert.All(report.Connections, c =>
        {
            Assert.Equal("rs2", c.Server);
            Assert.True(c.Survived);
            Assert.Equal(11, c.Exchanges); // one on opening, then one per 100 ms for 1 s
            Assert.NotEqual(0, c.LocalPort);
        });

        // IPv6, stopped early by SIGTERM: the loop still reports what it saw.
        await using var run = lab.Client.StartHold(rs2.Endpoint(Lab.EchoPort, ipv6: true), new LabHoldOptions
        {
            Connections = 3, Interval = TimeSpan.FromMilliseconds(50), Duration = TimeSpan.FromSeconds(30),
        });
        Assert.Equal(3, await run.WaitConnectedAsync(ct: Ct));
        var early = await run.StopAsync(Ct);
        Assert.True(early.StoppedEarly);
        Assert.Equal(3, early.Survived);
        Assert.Equal(new Dictionary<string, int> { ["rs2"] = 3 }, early.PerServer);
    }

    [Fact]
    public async Task Udp_echo_answers_from_the_address_it_was_sent_to()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 1 }, Ct);
        var rs1 = lab["rs1"];
        await rs1.StartServerAsync(ct: Ct);
        foreach (var ipv6 in new[] { false, true })
        {
            var r = await lab.Client.UdpAsync(rs1.Endpoint(Lab.UdpPort, ipv6), new LabRequestOptions { Count = 10 }, Ct);
            Assert.True(r.Successes == 10, ReportJson.Write(r));
            Assert.Equal(10, r.PerServer["rs1"]);
        }
    }

    [Fact]
    public async Task Fixed_source_ports_replay_the_same_flows()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 1 }, Ct);
        var rs1 = lab["rs1"];
        await rs1.StartServerAsync(ct: Ct);
        var options = new LabRequestOptions { Count = 20, SourcePorts = (41000, 41009), Flows = true };
        var first = await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), options, Ct);
        var second = await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), options, Ct);
        Assert.True(first.Successes == 20, ReportJson.Write(first));
        Assert.True(second.Successes == 20, ReportJson.Write(second));
        var ports = Enumerable.Range(0, 20).Select(i => 41000 + i % 10).ToList();
        Assert.Equal(ports, first.Flows!.Select(f => f.SourcePort));
        Assert.Equal(ports, second.Flows!.Select(f => f.SourcePort));
    }

    [Fact]
    public async Task Health_endpoint_follows_the_health_file()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 1 }, Ct);
        var rs1 = lab["rs1"];
        await rs1.StartServerAsync(ct: Ct);
        var health = new LabRequestOptions { Count = 3, Path = "/healthz" };

        Assert.Equal(3, (await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), health, Ct)).Successes);
        rs1.SetHealthy(false);
        var down = await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), health, Ct);
        Assert.Equal(0, down.Successes);
        Assert.Equal(3, down.Errors["status-503"]);
        // The other paths still answer while unhealthy (a health check, not the service, is what fails).
        Assert.Equal(3, (await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), new LabRequestOptions { Count = 3 }, Ct)).Successes);
        rs1.SetHealthy(true);
        Assert.Equal(3, (await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), health, Ct)).Successes);
    }

    [Fact]
    public async Task A_stopped_server_refuses_and_a_cut_link_times_out()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 2 }, Ct);
        var (rs1, rs2) = (lab["rs1"], lab["rs2"]);
        var server1 = await rs1.StartServerAsync(ct: Ct);
        await rs2.StartServerAsync(ct: Ct);
        // Generous timeouts where an answer is expected (a refusal is immediate); a short one where none is.
        var patient = new LabRequestOptions { Count = 2, Timeout = TimeSpan.FromSeconds(5) };

        Assert.Equal(0, await server1.StopAsync(TimeSpan.FromSeconds(15))); // SIGTERM: a clean exit
        var refused = await lab.Client.HttpAsync(rs1.Endpoint(Lab.HttpPort), patient, Ct);
        Assert.True(refused.Errors.GetValueOrDefault("ConnectionRefused") == 2, ReportJson.Write(refused));

        await lab.SetLinkAsync(rs2, up: false);
        var cut = await lab.Client.HttpAsync(rs2.Endpoint(Lab.HttpPort), patient with { Timeout = TimeSpan.FromMilliseconds(500) }, Ct);
        Assert.Equal(0, cut.Successes);
        await lab.SetLinkAsync(rs2, up: true);
        var back = await lab.Client.HttpAsync(rs2.Endpoint(Lab.HttpPort), patient, Ct);
        Assert.True(back.Successes == 2, ReportJson.Write(back));
    }
}
