using Merlin.Contracts;
using Wire = Merlin.Contracts;

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

    private static Wire.RealServer CheckedServer(Google.Protobuf.WellKnownTypes.Duration period, Google.Protobuf.WellKnownTypes.Duration timeout) => new()
    {
        ServiceID = "web",
        Key = new() { Ip = "198.18.1.21", Port = 80 },
        Config = new() { Weight = 1, Forward = Wire.ForwardMethod.Route },
        HealthCheck = new() { Endpoint = "http://:8080/health", Period = period, Timeout = timeout, UpThreshold = 1, DownThreshold = 1 },
    };

    private static Google.Protobuf.WellKnownTypes.Duration D(long seconds, int nanos = 0) => new() { Seconds = seconds, Nanos = nanos };

    public static TheoryData<long, int> NotNormalized => new()
    {
        { 1, -1 },
        { 0, 1_000_000_000 },
        { -1, 5 },
        { long.MaxValue, 0 },
        { long.MinValue, 0 },
    };

    [Theory, MemberData(nameof(NotNormalized))]
    public void TryToModel_HealthPeriodNotANormalizedDuration_IsAnErrorNamingTheField(long seconds, int nanos)
    {
        var error = WireMapper.TryToModel(CheckedServer(D(seconds, nanos), D(1)), out _);

        Assert.NotNull(error);
        Assert.Equal("health_check.period", error.Field);
        Assert.Contains("is not a valid duration", error.Reason);
    }

    [Theory, MemberData(nameof(NotNormalized))]
    public void TryToModel_HealthTimeoutNotANormalizedDuration_IsAnErrorNamingTheField(long seconds, int nanos)
    {
        var error = WireMapper.TryToModel(CheckedServer(D(10), D(seconds, nanos)), out _);

        Assert.Equal("health_check.timeout", error?.Field);
    }

    [Theory]
    [InlineData(0, 100, "health_check.period", "0.0001ms is shorter than the shortest period (100ms)")]
    [InlineData(0, 99_999_999, "health_check.period", "is shorter than the shortest period (100ms)")]
    [InlineData(3601, 0, "health_check.period", "1h1s is longer than the longest period (1h)")]
    public void TryToModel_HealthPeriodOutOfBounds_IsRefused(long seconds, int nanos, string field, string reason)
    {
        var error = WireMapper.TryToModel(CheckedServer(D(seconds, nanos), D(0, 50)), out _);

        Assert.Equal(field, error?.Field);
        Assert.Contains(reason, error!.Reason);
    }

    [Fact]
    public void TryToModel_HealthTimingAtTheBounds_IsAccepted()
    {
        Assert.Null(WireMapper.TryToModel(CheckedServer(D(0, 100_000_000), D(0, 1_000_000)), out var fast));
        Assert.Equal(TimeSpan.FromMilliseconds(100), fast!.HealthCheck.Period);
        Assert.Null(WireMapper.TryToModel(CheckedServer(D(3600), D(3600)), out _));
        Assert.Equal("health_check.timeout", WireMapper.TryToModel(CheckedServer(D(1), D(0, 999_999)), out _)?.Field);
    }

    [Fact]
    public void TryDuration_RefusesWhatToTimeSpanWouldThrowOn()
    {
        Assert.Null(WireMapper.TryDuration(D(2, 500_000_000), "period", out var ok));
        Assert.Equal(TimeSpan.FromSeconds(2.5), ok);
        Assert.Equal("period", WireMapper.TryDuration(D(1, -1), "period", out _)?.Field);
    }
}
