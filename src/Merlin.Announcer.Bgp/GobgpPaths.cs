using System.Net;
using System.Net.Sockets;
using Apipb;
using Google.Protobuf.WellKnownTypes;

namespace Merlin.Announcer.Bgp;

/// <summary>The gobgp API messages for a VIP's host route: what AddPath announces and DeletePath withdraws.</summary>
internal static class GobgpPaths
{
    public static readonly Family Ipv4 = new() { Afi = Family.Types.Afi.Ip, Safi = Family.Types.Safi.Unicast };
    public static readonly Family Ipv6 = new() { Afi = Family.Types.Afi.Ip6, Safi = Family.Types.Safi.Unicast };

    public static Family FamilyOf(IPAddress a) => a.AddressFamily == AddressFamily.InterNetworkV6 ? Ipv6 : Ipv4;

    /// <summary>
    /// VIP/32 (or /128), origin IGP. The next hop is left unspecified (0.0.0.0 / ::), which gobgpd fills in
    /// with each session's own local address, so the router forwards the VIP to this node. IPv6 carries its
    /// prefix and next hop in MP_REACH_NLRI, as BGP requires for anything but IPv4.
    /// </summary>
    public static Apipb.Path HostRoute(IPAddress vip)
    {
        var v6 = vip.AddressFamily == AddressFamily.InterNetworkV6;
        var nlri = Any.Pack(new IPAddressPrefix { Prefix = vip.ToString(), PrefixLen = v6 ? 128u : 32u });
        var path = new Apipb.Path { Family = FamilyOf(vip), Nlri = nlri };
        path.Pattrs.Add(Any.Pack(new OriginAttribute { Origin = 0 }));
        if (v6)
        {
            var reach = new MpReachNLRIAttribute { Family = Ipv6 };
            reach.NextHops.Add("::");
            reach.Nlris.Add(nlri);
            path.Pattrs.Add(Any.Pack(reach));
        }
        else
        {
            path.Pattrs.Add(Any.Pack(new NextHopAttribute { NextHop = "0.0.0.0" }));
        }
        return path;
    }

    /// <summary>The VIP a listed path is for, or null when it is not a host route merlin would add.</summary>
    public static IPAddress? VipOf(Apipb.Path path) =>
        path.Nlri is { } any && any.TryUnpack<IPAddressPrefix>(out var p) && IPAddress.TryParse(p.Prefix, out var a)
            && p.PrefixLen == (a.AddressFamily == AddressFamily.InterNetworkV6 ? 128u : 32u)
            ? a
            : null;
}
