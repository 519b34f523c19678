using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Merlin.Contracts;

namespace Merlin.Cli.Tests;

public class ServerCommandTests
{
    private static RealServer.Types.Key Key(string ip, uint port) => new() { Ip = ip, Port = port };

    [Fact]
    public async Task Add_WithHealthCheck_SendsExactServer()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "-w", "5", "-f", "route",
            "--health-endpoint", "http://:8080/health", "--health-period", "5s", "--health-timeout", "500ms",
            "--health-up", "3", "--health-down", "2");

        var expected = new RealServer
        {
            ServiceID = "web",
            Key = Key("10.0.1.1", 80),
            Config = new() { Weight = 5, Forward = ForwardMethod.Route },
            HealthCheck = new()
            {
                Endpoint = "http://:8080/health",
                Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(5)),
                Timeout = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(500)),
                UpThreshold = 3,
                DownThreshold = 2,
            },
        };
        Assert.Equal(expected, run.Request<RealServer>("CreateServer"));
        Assert.Equal("", run.Out);
    }

    [Fact]
    public async Task Add_EndpointOnly_FillsDefaultTiming()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "masq", "--health-endpoint", "tcp://:80/");

        var health = run.Request<RealServer>("CreateServer").HealthCheck;
        Assert.Equal(new RealServer.Types.HealthCheck
        {
            Endpoint = "tcp://:80/",
            Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(10)),
            Timeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
            UpThreshold = 2,
            DownThreshold = 1,
        }, health);
    }

    [Fact]
    public async Task Add_NoHealthCheck_SendsNone()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "route");

        var sent = run.Request<RealServer>("CreateServer");
        Assert.Null(sent.HealthCheck);
        Assert.False(sent.Config.HasTunnelType);
        Assert.False(sent.Config.HasUpperThreshold);
    }

    [Fact]
    public async Task Add_WeightZero_IsSentAsPresentZero()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "--weight", "0", "--forward", "route");

        var config = run.Request<RealServer>("CreateServer").Config;
        Assert.Equal(0u, config.Weight);
        // The wrapper is on the wire: a decoder sees weight 0, not "no weight".
        Assert.Equal(0u, RealServer.Types.Config.Parser.ParseFrom(config.ToByteArray()).Weight);
    }

    [Fact]
    public async Task Add_GueTunnelAndThresholds_SendsEveryField()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "-w", "2", "-f", "tunnel",
            "--tunnel-type", "gue", "--tunnel-port", "6080", "--tunnel-flags", "csum,remcsum",
            "--upper-threshold", "1000", "--lower-threshold", "800");

        var expected = new RealServer.Types.Config
        {
            Weight = 2, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080,
            TunnelFlags = { "csum", "remcsum" }, UpperThreshold = 1000, LowerThreshold = 800,
        };
        Assert.Equal(expected, run.Request<RealServer>("CreateServer").Config);
    }

    [Theory]
    [InlineData("masq", ForwardMethod.Masq)]
    [InlineData("NAT", ForwardMethod.Masq)]
    [InlineData("dr", ForwardMethod.Route)]
    [InlineData("Tunnel", ForwardMethod.Tunnel)]
    public async Task Add_ForwardMethodWords_MapToWireEnum(string word, ForwardMethod method)
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", word);

        Assert.Equal(method, run.Request<RealServer>("CreateServer").Config.Forward);
    }

    [Fact]
    public async Task Add_IPv6Server_SendsCanonicalAddress()
    {
        var run = await Meradm.RunAsync("server", "add", "web6", "[2001:db8:0:0::10]:8080", "-w", "1", "-f", "route");

        Assert.Equal(Key("2001:db8::10", 8080), run.Request<RealServer>("CreateServer").Key);
    }

    [Theory]
    [InlineData("--weight", "server", "add", "web", "10.0.1.1:80", "-f", "route")]
    [InlineData("--forward", "server", "add", "web", "10.0.1.1:80", "-w", "1")]
    [InlineData("--forward: \"bridge\" is not route, tunnel or masq", "server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "bridge")]
    [InlineData("--weight: \"2147483648\" is not a whole number from 0 to 2147483647", "server", "add", "web", "10.0.1.1:80", "-w", "2147483648", "-f", "route")]
    [InlineData("--weight", "server", "add", "web", "10.0.1.1:80", "-w", "-1", "-f", "route")]
    [InlineData("<ip:port>: port \"http\" must be a number", "server", "add", "web", "10.0.1.1:http", "-w", "1", "-f", "route")]
    [InlineData("<ip:port>: \"web\" is not ip:port", "server", "add", "10.0.1.1:80", "web", "-w", "1", "-f", "route")]
    [InlineData("--health-period: needs --health-endpoint", "server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "route", "--health-period", "5s")]
    [InlineData("--health-timeout: \"1\" needs a unit", "server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "route", "--health-endpoint", "http://:80/", "--health-timeout", "1")]
    [InlineData("--health-period: \"0s\" must be longer than zero", "server", "edit", "web", "10.0.1.1:80", "--health-period", "0s")]
    [InlineData("--health-up", "server", "edit", "web", "10.0.1.1:80", "--health-up", "0")]
    [InlineData("--tunnel-type: \"vxlan\" is not ipip, gue or gre", "server", "add", "web", "10.0.1.1:80", "-w", "1", "-f", "tunnel", "--tunnel-type", "vxlan")]
    [InlineData("<ip:port>", "server", "del", "web", "[2001:db8::1]")]
    public async Task BadArguments_AreUsageErrorsNamingTheArgument(string expected, params string[] args)
    {
        var run = await Meradm.RunAsync(args);

        run.AssertUsageError(expected);
    }

    [Fact]
    public async Task Edit_WeightZero_SendsOnlyTheWeight()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "10.0.1.1:80", "-w", "0");

        var expected = new RealServer
        {
            ServiceID = "web",
            Key = Key("10.0.1.1", 80),
            Config = new() { Weight = 0 },
        };
        var sent = run.Request<RealServer>("UpdateServer");
        Assert.Equal(expected, sent);
        Assert.NotNull(sent.Config.Weight);
        Assert.Null(sent.HealthCheck);
    }

    [Fact]
    public async Task Edit_WithoutWeight_SendsNoWeight()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "10.0.1.1:80", "-f", "masq", "-x", "50");

        var config = run.Request<RealServer>("UpdateServer").Config;
        Assert.Null(config.Weight);
        Assert.Equal(ForwardMethod.Masq, config.Forward);
        Assert.Equal(50u, config.UpperThreshold);
        Assert.False(config.HasLowerThreshold);
    }

    [Fact]
    public async Task Edit_EmptyHealthEndpoint_SendsPresentEmptyEndpointToClearTheCheck()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "10.0.1.1:80", "--health-endpoint", "");

        var sent = run.Request<RealServer>("UpdateServer");
        Assert.Equal(new RealServer.Types.HealthCheck { Endpoint = "" }, sent.HealthCheck);
        Assert.Null(sent.Config.Weight);
        // Survives encoding: the daemon sees an empty StringValue, not a missing one.
        Assert.Equal("", RealServer.Parser.ParseFrom(sent.ToByteArray()).HealthCheck.Endpoint);
    }

    [Fact]
    public async Task Edit_HealthTimingOnly_SendsNoEndpoint()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "10.0.1.1:80", "--health-period", "30s", "--health-down", "3");

        Assert.Equal(new RealServer.Types.HealthCheck
        {
            Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(30)),
            DownThreshold = 3,
        }, run.Request<RealServer>("UpdateServer").HealthCheck);
    }

    [Fact]
    public async Task Edit_NewHealthEndpoint_SendsOnlyTheEndpoint()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "[2001:db8::10]:80", "--health-endpoint", "https://:8443/ready");

        var sent = run.Request<RealServer>("UpdateServer");
        Assert.Equal(Key("2001:db8::10", 80), sent.Key);
        Assert.Equal(new RealServer.Types.HealthCheck { Endpoint = "https://:8443/ready" }, sent.HealthCheck);
    }

    [Fact]
    public async Task Edit_NothingToChange_IsUsageError()
    {
        var run = await Meradm.RunAsync("server", "edit", "web", "10.0.1.1:80");

        run.AssertUsageError("nothing to change");
    }

    [Fact]
    public async Task Delete_SendsServiceIdAndKeyOnly()
    {
        var run = await Meradm.RunAsync("server", "del", "web", "[2001:db8::10]:80");

        Assert.Equal(new RealServer { ServiceID = "web", Key = Key("2001:db8::10", 80) }, run.Request<RealServer>("DeleteServer"));
    }
}
