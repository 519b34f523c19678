using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Model.Tests;

public class QuoteTests
{
    private static readonly string Huge = new('a', 71_728);

    [Fact]
    public void Quote_ShortValue_IsQuotedWhole()
    {
        Assert.Equal("\"foo\"", Validation.Quote("foo"));
        Assert.Equal($"\"{new string('x', Validation.MaxQuoted)}\"", Validation.Quote(new string('x', Validation.MaxQuoted)));
    }

    [Fact]
    public void Quote_LongValue_IsCutToAPrefixWithItsLength()
    {
        Assert.Equal($"\"{new string('a', 64)}…\" (71,728 characters)", Validation.Quote(Huge));
    }

    [Fact]
    public void Quote_NeverCutsACharacterInHalf()
    {
        var text = new string('a', Validation.MaxQuoted - 1) + "😀" + "tail";

        var quoted = Validation.Quote(text);

        Assert.StartsWith($"\"{new string('a', Validation.MaxQuoted - 1)}…\"", quoted);
    }

    /// <summary>Every validated field that quotes what it was sent, fed 70 KiB.</summary>
    public static TheoryData<string> HugeFields => new("id", "key.ip", "scheduler", "flags", "endpoint", "tunnel_flags", "serviceID");

    [Theory, MemberData(nameof(HugeFields))]
    public void TryToModel_HugeValue_ErrorQuotesAShortPrefixAndTheLength(string field)
    {
        var service = new Wire.VirtualService
        {
            Id = "web",
            Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp },
            Config = new() { Scheduler = "sh" },
        };
        var server = new Wire.RealServer
        {
            ServiceID = "web",
            Key = new() { Ip = "198.18.1.1", Port = 80 },
            Config = new() { Weight = 1, Forward = Wire.ForwardMethod.Tunnel, TunnelType = Wire.TunnelType.Gue, TunnelPort = 6080 },
        };
        var invalidId = new string('é', 200);
        switch (field)
        {
            case "id": service.Id = invalidId; break;
            case "serviceID": server.ServiceID = invalidId; break;
            case "key.ip": server.Key.Ip = Huge; break;
            case "scheduler": service.Config.Scheduler = Huge; break;
            case "flags": service.Config.Flags.Add(Huge); break;
            case "endpoint": server.HealthCheck = new() { Endpoint = "http://" + Huge }; break;
            case "tunnel_flags": server.Config.TunnelFlags.Add(Huge); break;
        }

        var error = field is "id" or "scheduler" or "flags" ? WireMapper.TryToModel(service, out _) : WireMapper.TryToModel(server, out _);

        Assert.NotNull(error);
        Assert.True(error.ToString().Length < 300, error.ToString());
        Assert.Contains(field is "id" or "serviceID" ? "(200 characters)" : "(71,7", error.Reason);
    }

    [Fact]
    public void ParsersOfOperatorInput_HugeValue_QuoteAShortPrefix()
    {
        Assert.False(Endpoints.TryParse(Huge, out _, out _, out var endpointError));
        Assert.True(endpointError.Length < 200, endpointError);
        Assert.False(Durations.TryParse(Huge, out _, out var durationError));
        Assert.True(durationError!.Length < 200, durationError);
    }
}
