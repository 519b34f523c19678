using System.Text.Json;
using Google.Protobuf.WellKnownTypes;
using Merlin.Contracts;

namespace Merlin.Cli.Tests;

public class DrainCommandTests
{
    private static readonly DateTimeOffset Now = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task Drain_SendsTheServerAndThePeriod()
    {
        var run = await Meradm.RunAsync("server", "drain", "web", "[2001:db8::10]:80", "--period", "300s");

        Assert.Equal(0, run.ExitCode);
        var expected = new DrainRequest
        {
            Server = new RealServer { ServiceID = "web", Key = new() { Ip = "2001:db8::10", Port = 80 } },
            Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(300)),
        };
        Assert.Equal(expected, run.Request<DrainRequest>("DrainServer"));
    }

    [Fact]
    public async Task Undrain_SendsTheServer()
    {
        var run = await Meradm.RunAsync("server", "undrain", "web", "10.0.1.1:80");

        Assert.Equal(0, run.ExitCode);
        Assert.Equal(new RealServer { ServiceID = "web", Key = new() { Ip = "10.0.1.1", Port = 80 } }, run.Request<RealServer>("UndrainServer"));
    }

    [Theory]
    [InlineData("--period", "0s", "--period")]
    [InlineData("--period", "ten", "--period")]
    [InlineData("--period", "200h", "--period: 200h is longer than the longest drain (168h)")]
    public async Task Drain_BadPeriod_IsRefusedNamingTheOptionAndSendsNothing(string option, string value, string message)
    {
        var run = await Meradm.RunAsync("server", "drain", "web", "10.0.1.1:80", option, value);

        run.AssertUsageError(message);
    }

    [Fact]
    public async Task Drain_WithoutAPeriod_IsRefused()
    {
        var run = await Meradm.RunAsync("server", "drain", "web", "10.0.1.1:80");

        run.AssertUsageError("--period");
    }

    private static ListResponse Draining(bool daemonClock)
    {
        var item = new ListResponse.Types.Item
        {
            Service = new VirtualService { Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "mh" } },
        };
        item.Servers.Add(new RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 }, Config = new() { Weight = 5, Forward = ForwardMethod.Route },
            DrainDeadline = Timestamp.FromDateTimeOffset(Now + TimeSpan.FromSeconds(252)),
        });
        item.Servers.Add(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.2", Port = 80 }, Config = new() { Weight = 3, Forward = ForwardMethod.Route } });
        var response = new ListResponse();
        response.Items.Add(item);
        if (daemonClock) response.Now = Timestamp.FromDateTimeOffset(Now);
        return response;
    }

    [Fact]
    public async Task List_Table_ShowsDrainingServersWithTheTimeLeftByTheDaemonsClock()
    {
        var run = await Meradm.RunAsync(c => c.ListResponse = Draining(daemonClock: true), "list");

        Assert.Equal(0, run.ExitCode);
        var lines = run.Out.Split('\n');
        Assert.Contains("5 (draining, 4m12s left)", Assert.Single(lines, l => l.Contains("198.18.1.1:80")));
        Assert.DoesNotContain("draining", Assert.Single(lines, l => l.Contains("198.18.1.2:80")));
    }

    [Fact]
    public async Task List_Json_CarriesTheDeadlineAndSecondsLeft_NullWhenNotDraining()
    {
        var run = await Meradm.RunAsync(c => c.ListResponse = Draining(daemonClock: true), "list", "-o", "json");

        using var doc = JsonDocument.Parse(run.Out);
        var servers = doc.RootElement.GetProperty("services")[0].GetProperty("servers");
        Assert.Equal(Now + TimeSpan.FromSeconds(252), servers[0].GetProperty("drainDeadline").GetDateTimeOffset());
        Assert.Equal(252, servers[0].GetProperty("drainSecondsLeft").GetInt64());
        Assert.Equal(5, servers[0].GetProperty("weight").GetInt64());
        Assert.Equal(JsonValueKind.Null, servers[1].GetProperty("drainDeadline").ValueKind);
        Assert.Equal(JsonValueKind.Null, servers[1].GetProperty("drainSecondsLeft").ValueKind);
    }

    [Fact]
    public void Views_WithoutTheDaemonsClock_CountFromTheGivenClock_AndAPassedDeadlineIsDue()
    {
        var later = Output.Views.From(Draining(daemonClock: false), Now + TimeSpan.FromSeconds(12));
        Assert.Equal(240, later.Services[0].Servers[0].DrainSecondsLeft);

        var past = Output.Views.From(Draining(daemonClock: false), Now + TimeSpan.FromHours(1));
        Assert.Equal(0, past.Services[0].Servers[0].DrainSecondsLeft);
        var table = new StringWriter();
        Output.Tables.WriteList(table, past);
        Assert.Contains("5 (draining, removal due)", table.ToString());
    }
}
