namespace Merlin.Lab;

/// <summary>The shape of a lab. The default: a client, one load balancer, three real servers, one VIP, dual stack.</summary>
public sealed record LabOptions
{
    /// <summary>lb1 … lbN (at most 39): 198.18.0.11 …, 2001:db8::11 …</summary>
    public int LoadBalancers { get; init; } = 1;

    /// <summary>rs1 … rsN (at most 49): 198.18.0.51 …, 2001:db8::51 …; each has the VIPs on lo.</summary>
    public int RealServers { get; init; } = 3;

    /// <summary>VIPs 198.18.0.100 … (and 2001:db8::100 …), at most 50.</summary>
    public int VipCount { get; init; } = 1;

    /// <summary>IPv6 addresses next to the IPv4 ones (off: IPv6 is disabled in every namespace).</summary>
    public bool IPv6 { get; init; } = true;

    /// <summary>
    /// Put the client behind a router: a router host on the LAN (198.18.0.1) and on a second network
    /// (198.18.1.0/24, 2001:db8:1::/64) where the client is (198.18.1.2). LAN hosts route everything else via
    /// the router, and VIP routes (<see cref="Lab.RouteVipViaAsync"/>, BGP) live on the router.
    /// </summary>
    public bool Router { get; init; }

    /// <summary>More LAN hosts (role Other) by name, e.g. "etcd": 198.18.0.200 …, at most 50, names up to 13 of [a-z0-9].</summary>
    public IReadOnlyList<string> ExtraHosts { get; init; } = [];

    /// <summary>
    /// Put the VIPs on every real server's lo (with arp_ignore=1, arp_announce=2), as direct server return
    /// needs. Off: the real servers are bare (kernel defaults, no VIP), as a real-server agent finds them.
    /// </summary>
    public bool VipsOnRealServers { get; init; } = true;
}
