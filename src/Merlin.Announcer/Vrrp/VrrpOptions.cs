using System.Net;
using System.Net.Sockets;

namespace Merlin.Announcer.Vrrp;

/// <summary>
/// One VRRP instance run by keepalived: the service VIPs and the management VIP move together between
/// the nodes of a pair (or a few nodes), which speak unicast VRRP to each other.
/// </summary>
public sealed record VrrpOptions
{
    /// <summary>The interface that holds the VIPs and carries the adverts (the LB's LAN interface).</summary>
    public required string Interface { get; init; }

    /// <summary>The VRRP virtual router id (1–255), the same on every node of the pair and unique on the LAN.</summary>
    public required int RouterId { get; init; }

    /// <summary>1–254; the highest priority becomes MASTER (255 is reserved for an address owner).</summary>
    public int Priority { get; init; } = 100;

    /// <summary>The other nodes' own addresses; adverts are sent to each of them (unicast, no multicast).</summary>
    public required IReadOnlyList<IPAddress> Peers { get; init; }

    /// <summary>
    /// True: a node with a higher priority takes the VIPs back when it returns. False (the default): the VIPs
    /// stay where they are until that node fails, which saves a second move — except during
    /// <see cref="StartWindow"/> after a node took VIPs that nobody held (a cold start), so the higher
    /// priority still wins however the two starts were timed.
    /// </summary>
    public bool Preempt { get; init; }

    /// <summary>
    /// Without <see cref="Preempt"/>: how long a MASTER that took the VIPs when nobody held them (it heard no
    /// master since it started) can still be replaced by a higher priority. A MASTER that took over from a
    /// master it had heard keeps the VIPs at once.
    /// </summary>
    public TimeSpan StartWindow { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The address on which the API is reachable on whichever node is MASTER.</summary>
    public required IPAddress ManagementVip { get; init; }

    /// <summary>VRRPv3 advert interval (10 ms steps). A BACKUP takes over after about 3 intervals of silence.</summary>
    public TimeSpan AdvertInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Where the rendered configuration, the pid files and the notify FIFO live (one directory per daemon).</summary>
    public required string StateDir { get; init; }

    /// <summary>The keepalived executable (a name on PATH or a path).</summary>
    public string Keepalived { get; init; } = "keepalived";

    /// <summary>Run keepalived in this named network namespace (<c>keepalived -s</c>), as the daemon's --netns.</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>The vrrp_instance name, also the name in the FIFO's lines.</summary>
    public string InstanceName => $"merlin_{RouterId}";

    public string ConfigPath => Path.Combine(StateDir, "keepalived.conf");
    public string PidPath => Path.Combine(StateDir, "keepalived.pid");
    public string VrrpPidPath => Path.Combine(StateDir, "keepalived_vrrp.pid");
    public string FifoPath => Path.Combine(StateDir, "notify.fifo");

    /// <summary>keepalived's track_file: the number in it is added to <see cref="Priority"/> (-254: FAULT).</summary>
    public string PriorityFilePath => Path.Combine(StateDir, "priority");

    /// <summary>The track_file's name in the configuration.</summary>
    public string TrackFileName => $"{InstanceName}_priority";

    /// <summary>
    /// VRRPv3's Master_Down_Interval at this node's priority: 3 adverts plus a skew of (256 − priority)/256
    /// of one. A BACKUP that hears no advert for this long becomes MASTER.
    /// </summary>
    public TimeSpan DownInterval => AdvertInterval * 3 + AdvertInterval * ((256 - Priority) / 256.0);

    /// <summary>
    /// The first problem with these settings, named by the daemon flag that sets it
    /// (<c>--vrrp-priority</c>, <c>--management-vip</c>, …), or null when they are usable.
    /// </summary>
    public (string Flag, string Reason)? Validate()
    {
        if (string.IsNullOrWhiteSpace(Interface))
            return ("--vrrp-interface", "the interface that holds the VIPs is required (or --interface)");
        if (Interface.Length > 15 || Interface.Any(c => char.IsWhiteSpace(c) || c == '/' || c == '"' || c == '{' || c == '}'))
            return ("--vrrp-interface", $"\"{Interface}\" is not an interface name");
        if (RouterId is < 1 or > 255)
            return ("--vrrp-router-id", $"{RouterId} is not a VRRP router id (1-255, the same on both nodes of the pair)");
        if (Priority is < 1 or > 254)
            return ("--vrrp-priority", $"{Priority} is not a priority (1-254; the highest becomes MASTER)");
        if (IsUnusable(ManagementVip))
            return ("--management-vip", $"{ManagementVip} cannot be a VIP (unspecified, loopback, multicast or link-local)");
        if (Peers.Count == 0)
            return ("--vrrp-peer", "at least one peer is needed (the other node's own address; VRRP runs unicast)");
        foreach (var peer in Peers)
        {
            if (IsUnusable(peer)) return ("--vrrp-peer", $"{peer} is not a peer's address");
            if (peer.AddressFamily != ManagementVip.AddressFamily)
                return ("--vrrp-peer", $"{peer} is not of the management VIP's family ({ManagementVip}); one instance speaks one family");
            if (peer.Equals(ManagementVip)) return ("--vrrp-peer", $"{peer} is the management VIP, not a peer's own address");
        }
        if (Peers.Distinct().Count() != Peers.Count) return ("--vrrp-peer", "a peer is given twice");
        var centis = AdvertInterval.TotalMilliseconds / 10;
        if (centis < 1 || centis > 4095 || centis != Math.Floor(centis))
            return ("--vrrp-advert-interval", $"{AdvertInterval.TotalSeconds}s is not a VRRPv3 advert interval (10ms to 40.95s in steps of 10ms)");
        if (StartWindow < TimeSpan.Zero || StartWindow > TimeSpan.FromHours(1))
            return ("--vrrp-start-window", $"{StartWindow.TotalSeconds}s is not a start window (0s to 1h)");
        if (string.IsNullOrWhiteSpace(StateDir)) return ("--state-dir", "a directory for keepalived's files is required");
        return null;
    }

    private static bool IsUnusable(IPAddress a) =>
        a.Equals(IPAddress.Any) || a.Equals(IPAddress.IPv6Any) || IPAddress.IsLoopback(a) || a.IsIPv6LinkLocal || a.IsIPv6Multicast ||
        (a.AddressFamily == AddressFamily.InterNetwork && (a.GetAddressBytes()[0] >= 224 || a.GetAddressBytes() is [169, 254, ..]));
}
