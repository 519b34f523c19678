using System.Net;
using Merlin.Kubernetes.Pools;

namespace Merlin.Kubernetes.Tests.Pools;

public class AddressRangeTests
{
    [Theory]
    [InlineData("198.18.100.0/24", "198.18.100.0", "198.18.100.255", 256)]
    [InlineData("198.18.100.10-198.18.100.20", "198.18.100.10", "198.18.100.20", 11)]
    [InlineData("198.18.100.7", "198.18.100.7", "198.18.100.7", 1)]
    [InlineData("2001:db8::/120", "2001:db8::", "2001:db8::ff", 256)]
    [InlineData("2001:db8::/64", "2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", long.MaxValue)]
    public void TryParse_ValidForms_GiveTheRange(string text, string first, string last, long count)
    {
        Assert.True(AddressRange.TryParse(text, out var range, out var error), error);
        Assert.Equal($"{IPAddress.Parse(first)}-{IPAddress.Parse(last)}", range.ToString());
        Assert.Equal(count, range.Count);
        Assert.True(range.Contains(IPAddress.Parse(first)));
        Assert.True(range.Contains(IPAddress.Parse(last)));
    }

    [Theory]
    [InlineData("198.18.100.1/24", "host bits set")]
    [InlineData("198.18.100.0/33", "prefix length must be 0-32")]
    [InlineData("198.18.100.20-198.18.100.10", "ends before it starts")]
    [InlineData("198.18.100.1-2001:db8::1", "mixes IPv4 and IPv6")]
    [InlineData("pool", "is not a CIDR")]
    [InlineData("", "is empty")]
    public void TryParse_Invalid_SaysWhy(string text, string why)
    {
        Assert.False(AddressRange.TryParse(text, out _, out var error));
        Assert.Contains(why, error);
    }

    [Fact]
    public void Overlaps_OnlyWithinAFamily()
    {
        AddressRange.TryParse("198.18.100.0/24", out var a, out _);
        AddressRange.TryParse("198.18.100.200-198.18.101.5", out var b, out _);
        AddressRange.TryParse("198.18.101.0/24", out var c, out _);
        AddressRange.TryParse("::/0", out var v6, out _);
        Assert.True(a.Overlaps(b));
        Assert.False(a.Overlaps(c));
        Assert.False(a.Overlaps(v6));
    }
}
