using Merlin.Model;

namespace Merlin.Model.Tests;

public class EndpointsTests
{
    [Theory]
    [InlineData("10.0.0.1:80", "10.0.0.1", 80)]
    [InlineData("[2001:db8::1]:443", "2001:db8::1", 443)]
    [InlineData(" 198.18.0.10:65535 ", "198.18.0.10", 65535)]
    public void TryParse_ValidEndpoint_ReturnsAddressAndPort(string text, string ip, int port)
    {
        Assert.True(Endpoints.TryParse(text, out var address, out var parsedPort, out var error), error);
        Assert.Equal(ip, address.ToString());
        Assert.Equal(port, parsedPort);
    }

    [Theory]
    [InlineData("10.0.0.1", "not ip:port")]
    [InlineData("10.0.0.1:0", "1 to 65535")]
    [InlineData("10.0.0.1:70000", "1 to 65535")]
    [InlineData("2001:db8::1:80", "not ip:port")]
    [InlineData("10.0.1:80", "not an IPv4 or IPv6 address")]
    [InlineData("web:80", "not an IPv4 or IPv6 address")]
    [InlineData("[2001:db8::1]80", "not ip:port")]
    public void TryParse_InvalidEndpoint_SaysWhy(string text, string reason)
    {
        Assert.False(Endpoints.TryParse(text, out _, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Fact]
    public void Format_Ipv6_UsesBrackets() =>
        Assert.Equal("[2001:db8::1]:80", Endpoints.Format(System.Net.IPAddress.Parse("2001:db8::1"), 80));
}
