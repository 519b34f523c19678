using System.Net;
using System.Net.Sockets;

namespace Merlin.Announcer.Bgp;

/// <summary>A BGP neighbour (the router, or a route reflector) and its AS number.</summary>
public sealed record BgpPeer(IPAddress Address, uint Asn)
{
    public override string ToString() => $"{Address} AS{Asn}";

    /// <summary>Parses <c>ADDRESS:ASN</c> (<c>198.18.0.1:64512</c>, <c>[2001:db8::1]:64512</c>); null with a reason when it is not one.</summary>
    public static BgpPeer? TryParse(string text, out string reason)
    {
        reason = "";
        var colon = text.LastIndexOf(':');
        if (colon <= 0) { reason = $"\"{text}\" is not ADDRESS:ASN (e.g. 198.18.0.1:64512 or [2001:db8::1]:64512)"; return null; }
        var host = text[..colon];
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        else if (host.Contains(':')) { reason = $"\"{text}\": write an IPv6 peer in brackets, [ADDRESS]:ASN"; return null; }
        if (!IPAddress.TryParse(host, out var address)) { reason = $"\"{host}\" is not an IP address"; return null; }
        if (!uint.TryParse(text[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var asn) || asn == 0)
        {
            reason = $"\"{text[(colon + 1)..]}\" is not an AS number (1-4294967295)";
            return null;
        }
        return new BgpPeer(address, asn);
    }
}

/// <summary>
/// How this node speaks BGP through gobgpd: its AS and router id, the routers it peers with, and the timers
/// that bound how long a dead node's routes outlive it at the router (the hold time: gobgpd has no BFD).
/// </summary>
public sealed record BgpOptions
{
    /// <summary>This node's AS (every LB of a fleet may share one; the router accepts them as equal-cost paths).</summary>
    public required uint LocalAsn { get; init; }

    /// <summary>The BGP router id: an IPv4 address unique among the peers, usually the node's own.</summary>
    public required IPAddress RouterId { get; init; }

    /// <summary>The routers. An IPv4 peer carries the IPv4 VIPs, an IPv6 peer the IPv6 ones.</summary>
    public required IReadOnlyList<BgpPeer> Peers { get; init; }

    /// <summary>The source address of the sessions to IPv4 peers (null: the kernel's choice), also the VIPs' next hop.</summary>
    public IPAddress? LocalAddress { get; init; }

    /// <summary>As <see cref="LocalAddress"/> for IPv6 peers.</summary>
    public IPAddress? LocalAddress6 { get; init; }

    /// <summary>BGP hold time: a router drops this node's routes this long after the node went silent. Keepalives go every third of it.</summary>
    public TimeSpan HoldTime { get; init; } = TimeSpan.FromSeconds(9);

    /// <summary>Where gobgpd's API socket and pid file live (one directory per daemon).</summary>
    public required string StateDir { get; init; }

    /// <summary>The gobgpd executable (a name on PATH or a path).</summary>
    public string Gobgpd { get; init; } = "gobgpd";

    /// <summary>Run gobgpd in this named network namespace (the daemon's --netns).</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>After a withdrawal, how long the stop waits for every established peer to have been told.</summary>
    public TimeSpan WithdrawWait { get; init; } = TimeSpan.FromSeconds(3);

    public string SocketPath => Path.Combine(StateDir, "api.sock");
    public string PidPath => Path.Combine(StateDir, "gobgpd.pid");

    /// <summary>Keepalive interval: a third of the hold time, at least 1 s.</summary>
    public TimeSpan Keepalive => TimeSpan.FromSeconds(Math.Max(1, Math.Floor(HoldTime.TotalSeconds / 3)));

    /// <summary>The first problem, named by the daemon flag that sets it, or null when the settings are usable.</summary>
    public (string Flag, string Reason)? Validate()
    {
        if (LocalAsn == 0) return ("--bgp-asn", "0 is not an AS number (1-4294967295)");
        if (RouterId.AddressFamily != AddressFamily.InterNetwork || RouterId.Equals(IPAddress.Any) || RouterId.Equals(IPAddress.Broadcast))
            return ("--bgp-router-id", $"{RouterId} is not a router id (a unique IPv4 address, usually the node's own)");
        if (Peers.Count == 0) return ("--bgp-peer", "at least one peer is needed (the router, as ADDRESS:ASN)");
        foreach (var p in Peers)
        {
            if (p.Address.Equals(IPAddress.Any) || p.Address.Equals(IPAddress.IPv6Any) || IPAddress.IsLoopback(p.Address) || p.Address.IsIPv6Multicast ||
                (p.Address.AddressFamily == AddressFamily.InterNetwork && p.Address.GetAddressBytes()[0] >= 224))
                return ("--bgp-peer", $"{p.Address} is not a router's address");
            if (p.Asn == 0) return ("--bgp-peer", $"{p.Address}: 0 is not an AS number");
        }
        if (Peers.Select(p => p.Address).Distinct().Count() != Peers.Count) return ("--bgp-peer", "a peer is given twice");
        if (LocalAddress is { } l && l.AddressFamily != AddressFamily.InterNetwork)
            return ("--bgp-local-address", $"{l} is not an IPv4 address (give the IPv6 one as well, separately)");
        if (LocalAddress6 is { } l6 && l6.AddressFamily != AddressFamily.InterNetworkV6)
            return ("--bgp-local-address", $"{l6} is not an IPv6 address");
        var hold = HoldTime.TotalSeconds;
        if (hold != Math.Floor(hold) || hold is < 3 or > 65535)
            return ("--bgp-hold-time", $"{hold}s is not a BGP hold time (3-65535 whole seconds)");
        if (string.IsNullOrWhiteSpace(StateDir)) return ("--state-dir", "a directory for gobgpd's socket is required");
        // sockaddr_un holds 107 bytes of path.
        if (SocketPath.Length > 100) return ("--state-dir", $"{StateDir} is too long for gobgpd's API socket ({SocketPath.Length} of at most 100 characters)");
        return null;
    }
}
