using Merlin.Wire;

namespace Merlin.Model.Tests;

public class WireMapperTests
{
    [Fact]
    public void TryToModel_FirewallMarkService_IsTcpWhateverProtocolWasSent()
    {
        var wire = new Wire.VirtualService
        {
            Id = "marked",
            Key = new Wire.VirtualService.Types.Key { Fwmark = 7, Protocol = Wire.Protocol.Udp, Family = Wire.AddressFamily.Inet6 },
            Config = new Wire.VirtualService.Types.Config { Scheduler = "mh" },
        };

        Assert.Null(WireMapper.TryToModel(wire, out var model));

        Assert.Equal(ServiceKey.ForFirewallMark(7, IpFamily.V6, Protocol.Tcp), model!.Key);
    }

    [Fact]
    public void ToWire_PlainService_WritesNoExtensionFields_SoTheOriginalReadsTheSameBytes()
    {
        var wire = new Wire.VirtualService
        {
            Id = "web",
            Key = new Wire.VirtualService.Types.Key { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp },
            Config = new Wire.VirtualService.Types.Config { Scheduler = "sh", Flags = { "sh-port" } },
        };

        var roundTrip = WireMapper.ToWire(WireMapper.ToModel(wire));

        Assert.False(roundTrip.Config.HasPersistenceTimeout || roundTrip.Config.HasPersistenceNetmask || roundTrip.Config.HasOnePacket);
        Assert.Equal(["flag-2"], roundTrip.Config.Flags);
    }

    [Theory]
    [InlineData("http://:8080/health", null)]
    [InlineData("https://:8443/", null)]
    [InlineData("tcp://:9000", null)]
    [InlineData("http://10.0.0.1:8080/health", "must not name a host")]
    [InlineData("ftp://:21/", "scheme \"ftp\"")]
    [InlineData("http://:0/", "needs a port")]
    public void HealthEndpoint_OriginalFormOnly(string endpoint, string? error)
    {
        var result = Validation.HealthEndpoint(endpoint, "health_check.endpoint", out _);
        if (error is null) Assert.Null(result);
        else Assert.Contains(error, result!.Reason);
    }
}
