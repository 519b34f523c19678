using System.Net;
using Merlin.Lab.Server;

namespace Merlin.Lab.Tests;

/// <summary>The lab server's command line: typos and unbounded loops are rejected before anything runs.</summary>
public sealed class ArgsTests
{
    [Theory]
    [InlineData("198.18.0.100:80", "198.18.0.100", 80)]
    [InlineData("[2001:db8::100]:9000", "2001:db8::100", 9000)]
    public void Targets_parse(string text, string address, int port)
    {
        var ep = Args.ParseEndpoint(text);
        Assert.Equal(new IPEndPoint(IPAddress.Parse(address), port), ep);
    }

    [Theory]
    [InlineData("198.18.0.100")]
    [InlineData("198.18.0.100:0")]
    [InlineData("2001:db8::100:80")]
    [InlineData("example:80")]
    public void Targets_without_a_clear_port_are_rejected(string text) => Assert.Null(Args.ParseEndpoint(text));

    [Theory]
    [InlineData("200ms", 200)]
    [InlineData("2s", 2000)]
    [InlineData("2", 2000)]
    [InlineData("1.5m", 90_000)]
    [InlineData("1h", 3_600_000)]
    public void Durations_parse(string text, int ms) => Assert.Equal(TimeSpan.FromMilliseconds(ms), Args.ParseDuration(text));

    [Theory]
    [InlineData("")]
    [InlineData("2 s")]
    [InlineData("-1s")]
    [InlineData("1d")]
    public void Bad_durations_are_rejected(string text) => Assert.Null(Args.ParseDuration(text));

    [Fact]
    public void Options_are_read_once_and_unknown_ones_fail()
    {
        var a = Args.Parse(["client", "http", "--target", "198.18.0.100:80", "--count=5", "--flows", "--cuont", "3"]);
        Assert.Equal(["client", "http"], a.Words);
        Assert.Equal(5, a.Int("count", 100, 1, 10));
        Assert.True(a.Flag("flows"));
        a.Endpoint("target");
        var e = Assert.Throws<UsageException>(a.RejectUnknown);
        Assert.Contains("--cuont", e.Message);
    }

    [Fact]
    public void Limits_bound_every_loop()
    {
        Assert.Throws<UsageException>(() => Args.Parse(["--count", "0"]).Int("count", 1, 1, 1_000_000));
        Assert.Throws<UsageException>(() => Args.Parse(["--duration", "2h"]).Duration("duration", TimeSpan.FromSeconds(1), TimeSpan.FromHours(1)));
        Assert.Equal((40000, 40009), Args.Parse(["--source-ports", "40000-40009"]).PortRange("source-ports"));
        Assert.Throws<UsageException>(() => Args.Parse(["--source-ports", "40009-40000"]).PortRange("source-ports"));
    }
}
