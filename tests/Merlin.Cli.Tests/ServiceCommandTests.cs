using Google.Protobuf.WellKnownTypes;
using Merlin.Contracts;

namespace Merlin.Cli.Tests;

public class ServiceCommandTests
{
    private static VirtualService Service(string id, string ip, uint port, Protocol protocol, VirtualService.Types.Config config) =>
        new() { Id = id, Key = new() { Ip = ip, Port = port, Protocol = protocol }, Config = config };

    [Fact]
    public async Task Add_AllOptions_SendsExactService()
    {
        var run = await Meradm.RunAsync("service", "add", "web", "tcp", "10.0.0.1:80", "-s", "sh", "-b", "sh-port,sh-fallback",
            "--persistence", "300", "--persistence-netmask", "24", "--one-packet");

        var expected = Service("web", "10.0.0.1", 80, Protocol.Tcp, new()
        {
            Scheduler = "sh", Flags = { "sh-port", "sh-fallback" },
            PersistenceTimeout = 300, PersistenceNetmask = 24, OnePacket = true,
        });
        Assert.Equal(expected, run.Request<VirtualService>("CreateService"));
        Assert.Equal("", run.Out);
    }

    [Fact]
    public async Task Add_Minimal_SendsOnlyKeyAndScheduler()
    {
        var run = await Meradm.RunAsync("service", "add", "dns", "UDP", "198.18.0.53:53", "--scheduler", "rr");

        var sent = run.Request<VirtualService>("CreateService");
        Assert.Equal(Service("dns", "198.18.0.53", 53, Protocol.Udp, new() { Scheduler = "rr" }), sent);
        Assert.False(sent.Config.HasPersistenceTimeout);
        Assert.False(sent.Config.HasPersistenceNetmask);
        Assert.False(sent.Config.HasOnePacket);
    }

    [Fact]
    public async Task Add_IPv6_SendsCanonicalAddressWithoutBrackets()
    {
        var run = await Meradm.RunAsync("service", "add", "web6", "sctp", "[2001:DB8:0::1]:443", "-s", "mh", "-b", "mh-port");

        Assert.Equal(Service("web6", "2001:db8::1", 443, Protocol.Sctp, new() { Scheduler = "mh", Flags = { "mh-port" } }),
            run.Request<VirtualService>("CreateService"));
    }

    [Fact]
    public async Task Add_RepeatedFlagOption_SendsEveryFlag()
    {
        var run = await Meradm.RunAsync("service", "add", "web", "tcp", "10.0.0.1:80", "-s", "sh", "-b", "sh-port", "-b", "flag-1");

        Assert.Equal(["sh-port", "flag-1"], run.Request<VirtualService>("CreateService").Config.Flags);
    }

    [Theory]
    [InlineData("5m", 300u)]
    [InlineData("0", 0u)]
    [InlineData("1h", 3600u)]
    public async Task Add_PersistenceAsDuration_SendsSeconds(string persistence, uint seconds)
    {
        var run = await Meradm.RunAsync("service", "add", "web", "tcp", "10.0.0.1:80", "-s", "rr", "-p", persistence);

        var config = run.Request<VirtualService>("CreateService").Config;
        Assert.True(config.HasPersistenceTimeout);
        Assert.Equal(seconds, config.PersistenceTimeout);
    }

    [Fact]
    public async Task Add_Fwmark_SendsMarkAndFamilyWithoutAddress()
    {
        var run = await Meradm.RunAsync("service", "add", "marked", "--fwmark", "7", "-s", "wrr");

        var expected = new VirtualService
        {
            Id = "marked",
            Key = new() { Fwmark = 7, Family = AddressFamily.Inet },
            Config = new() { Scheduler = "wrr" },
        };
        Assert.Equal(expected, run.Request<VirtualService>("CreateService"));
    }

    [Fact]
    public async Task Add_FwmarkIPv6WithProtocol_SendsFamilyAndProtocol()
    {
        var run = await Meradm.RunAsync("service", "add", "marked6", "udp", "--fwmark", "42", "--ipv6", "-s", "sh");

        var key = run.Request<VirtualService>("CreateService").Key;
        Assert.Equal(new VirtualService.Types.Key { Fwmark = 42, Family = AddressFamily.Inet6, Protocol = Protocol.Udp }, key);
    }

    [Theory]
    [InlineData("<ip:port>", "service", "add", "web", "tcp", "10.0.0.1", "-s", "rr")]
    [InlineData("<ip:port>", "service", "add", "web", "tcp", "2001:db8::1:80", "-s", "rr")]
    [InlineData("<ip:port>", "service", "add", "web", "tcp", "10.0.0.1:0", "-s", "rr")]
    [InlineData("<protocol>", "service", "add", "web", "icmp", "10.0.0.1:80", "-s", "rr")]
    [InlineData("before ip:port", "service", "add", "web", "10.0.0.1:80", "tcp", "-s", "rr")]
    [InlineData("--scheduler", "service", "add", "web", "tcp", "10.0.0.1:80")]
    [InlineData("needs <protocol> and <ip:port>", "service", "add", "web", "-s", "rr")]
    [InlineData("needs <protocol> and <ip:port>", "service", "add", "web", "tcp", "-s", "rr")]
    [InlineData("--fwmark: a firewall-mark service has no ip:port", "service", "add", "web", "tcp", "10.0.0.1:80", "--fwmark", "3", "-s", "rr")]
    [InlineData("--ipv6", "service", "add", "web", "tcp", "10.0.0.1:80", "--ipv6", "-s", "rr")]
    [InlineData("--fwmark", "service", "add", "web", "--fwmark", "0", "-s", "rr")]
    [InlineData("--persistence", "service", "add", "web", "tcp", "10.0.0.1:80", "-s", "rr", "--persistence", "1.5s")]
    [InlineData("--persistence-netmask", "service", "add", "web", "tcp", "10.0.0.1:80", "-s", "rr", "--persistence-netmask", "129")]
    public async Task Add_BadArguments_AreUsageErrorsNamingTheArgument(string expected, params string[] args)
    {
        var run = await Meradm.RunAsync(args);

        run.AssertUsageError(expected);
        Assert.Empty(run.Connections);
    }

    [Fact]
    public async Task Edit_SchedulerOnly_SendsNothingElse()
    {
        var run = await Meradm.RunAsync("service", "edit", "web", "-s", "wrr");

        var sent = run.Request<VirtualService>("UpdateService");
        Assert.Equal(new VirtualService { Id = "web", Config = new() { Scheduler = "wrr" } }, sent);
        Assert.Null(sent.Key);
        Assert.False(sent.Config.HasPersistenceTimeout);
        Assert.False(sent.Config.HasOnePacket);
    }

    [Fact]
    public async Task Edit_FlagsOnly_LeavesSchedulerEmpty()
    {
        var run = await Meradm.RunAsync("service", "edit", "web", "-b", "sh-fallback");

        Assert.Equal(new VirtualService { Id = "web", Config = new() { Flags = { "sh-fallback" } } },
            run.Request<VirtualService>("UpdateService"));
    }

    [Fact]
    public async Task Edit_EmptyFlags_SendsOneEmptyNameToClearThem()
    {
        var run = await Meradm.RunAsync("service", "edit", "web", "-b", "");

        Assert.Equal([""], run.Request<VirtualService>("UpdateService").Config.Flags);
    }

    [Fact]
    public async Task Edit_PersistenceZeroAndOnePacketFalse_AreSentAsPresentValues()
    {
        var run = await Meradm.RunAsync("service", "edit", "web", "--persistence", "0", "--one-packet", "false", "-M", "/24");

        var config = run.Request<VirtualService>("UpdateService").Config;
        Assert.True(config.HasPersistenceTimeout);
        Assert.Equal(0u, config.PersistenceTimeout);
        Assert.True(config.HasOnePacket);
        Assert.False(config.OnePacket);
        Assert.Equal(24u, config.PersistenceNetmask);
        Assert.Equal("", config.Scheduler);
    }

    [Fact]
    public async Task Edit_NothingToChange_IsUsageError()
    {
        var run = await Meradm.RunAsync("service", "edit", "web");

        run.AssertUsageError("nothing to change");
    }

    [Theory]
    [InlineData("del")]
    [InlineData("delete")]
    [InlineData("rm")]
    public async Task Delete_SendsTheId(string verb)
    {
        var run = await Meradm.RunAsync("service", verb, "web");

        Assert.Equal(new StringValue { Value = "web" }, run.Request<StringValue>("DeleteService"));
    }

    [Fact]
    public async Task Delete_WithoutId_IsUsageError()
    {
        var run = await Meradm.RunAsync("service", "del");

        run.AssertUsageError("Required argument missing");
    }
}
