using System.Net;
using Apipb;
using Merlin.Announcer.Bgp;

namespace Merlin.Announcer.Tests;

/// <summary>The gobgp messages for a VIP's host route, and the BGP settings' checks.</summary>
public class BgpPathsTests
{
    [Fact]
    public void Ipv4Vip_IsA32WithOriginIgp_AndANextHopGobgpdFillsIn()
    {
        var path = GobgpPaths.HostRoute(IPAddress.Parse("198.18.0.100"));
        Assert.Equal((Family.Types.Afi.Ip, Family.Types.Safi.Unicast), (path.Family.Afi, path.Family.Safi));
        Assert.Equal("type.googleapis.com/apipb.IPAddressPrefix", path.Nlri.TypeUrl);
        var prefix = path.Nlri.Unpack<IPAddressPrefix>();
        Assert.Equal(("198.18.0.100", 32u), (prefix.Prefix, prefix.PrefixLen));
        Assert.Equal(["type.googleapis.com/apipb.OriginAttribute", "type.googleapis.com/apipb.NextHopAttribute"], path.Pattrs.Select(a => a.TypeUrl));
        Assert.Equal(0u, path.Pattrs[0].Unpack<OriginAttribute>().Origin);
        Assert.Equal("0.0.0.0", path.Pattrs[1].Unpack<NextHopAttribute>().NextHop);
        Assert.Equal(IPAddress.Parse("198.18.0.100"), GobgpPaths.VipOf(path));
    }

    [Fact]
    public void Ipv6Vip_IsA128_CarriedInMpReachNlri()
    {
        var path = GobgpPaths.HostRoute(IPAddress.Parse("2001:db8::100"));
        Assert.Equal(Family.Types.Afi.Ip6, path.Family.Afi);
        Assert.Equal(("2001:db8::100", 128u), (path.Nlri.Unpack<IPAddressPrefix>().Prefix, path.Nlri.Unpack<IPAddressPrefix>().PrefixLen));
        Assert.Equal(["type.googleapis.com/apipb.OriginAttribute", "type.googleapis.com/apipb.MpReachNLRIAttribute"], path.Pattrs.Select(a => a.TypeUrl));
        var reach = path.Pattrs[1].Unpack<MpReachNLRIAttribute>();
        Assert.Equal(["::"], reach.NextHops);
        Assert.Equal(path.Nlri, Assert.Single(reach.Nlris));
        Assert.Equal(IPAddress.Parse("2001:db8::100"), GobgpPaths.VipOf(path));
    }

    [Fact]
    public void VipOf_IgnoresRoutesMerlinWouldNotAdd()
    {
        var path = GobgpPaths.HostRoute(IPAddress.Parse("198.18.0.100"));
        path.Nlri = Google.Protobuf.WellKnownTypes.Any.Pack(new IPAddressPrefix { Prefix = "198.18.0.0", PrefixLen = 24 });
        Assert.Null(GobgpPaths.VipOf(path));
    }

    [Fact]
    public void Normalize_IsTheSameForTheSameSet_InAnyOrder()
    {
        var a = new[] { "2001:db8::1", "198.18.0.101", "198.18.0.100", "198.18.0.100" }.Select(IPAddress.Parse).ToList();
        var expected = new[] { "198.18.0.100", "198.18.0.101", "2001:db8::1" };
        Assert.Equal(expected, VipSet.Normalize(a).Select(v => v.ToString()));
        Assert.Equal(expected, VipSet.Normalize(Enumerable.Reverse(a)).Select(v => v.ToString()));
    }

    [Theory]
    [InlineData("198.18.0.1:64512", "198.18.0.1", 64512u)]
    [InlineData("[2001:db8::1]:4200000000", "2001:db8::1", 4200000000u)]
    public void Peer_Parses(string text, string address, uint asn)
    {
        var peer = BgpPeer.TryParse(text, out var reason);
        Assert.Equal("", reason);
        Assert.Equal(new BgpPeer(IPAddress.Parse(address), asn), peer);
    }

    [Fact]
    public void Options_Validate_NamesTheFlag()
    {
        var good = new BgpOptions { LocalAsn = 64513, RouterId = IPAddress.Parse("10.0.0.1"), Peers = [new BgpPeer(IPAddress.Parse("10.0.0.254"), 64512)], StateDir = "/var/lib/merlin/gobgpd" };
        Assert.Null(good.Validate());
        Assert.Equal("--bgp-peer", (good with { Peers = [new BgpPeer(IPAddress.Loopback, 1)] }).Validate()?.Flag);
        Assert.Equal("--bgp-local-address", (good with { LocalAddress = IPAddress.Parse("2001:db8::1") }).Validate()?.Flag);
        Assert.Equal("--bgp-hold-time", (good with { HoldTime = TimeSpan.FromSeconds(1.5) }).Validate()?.Flag);
        Assert.Equal("--state-dir", (good with { StateDir = "/" + new string('d', 100) }).Validate()?.Flag);
        Assert.Throws<ArgumentException>(() => new GobgpAnnouncer(good with { LocalAsn = 0 }, Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance));
    }
}
