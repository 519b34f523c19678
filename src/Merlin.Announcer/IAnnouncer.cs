using System.Net;
using System.Net.Sockets;

namespace Merlin.Announcer;

/// <summary>
/// Makes this node hold (or announce routes to) the VIPs of its services. It is told the whole desired set
/// every time, never a delta, so telling it the same set twice does nothing and a missed call is repaired by
/// the next one. It reports its state for <c>meradm status</c>, <c>/metrics</c> and <c>/readyz</c>.
/// </summary>
public interface IAnnouncer : IAsyncDisposable
{
    /// <summary><c>static</c>, <c>vrrp</c> or <c>bgp</c>.</summary>
    string Mode { get; }

    /// <summary>Starts announcing the set last given to <see cref="AnnounceAsync"/> (none yet: only the management VIP).</summary>
    Task StartAsync(CancellationToken ct);

    /// <summary>The whole desired set of service VIPs. Idempotent; may be called before <see cref="StartAsync"/>.</summary>
    Task AnnounceAsync(IReadOnlyCollection<IPAddress> vips, CancellationToken ct);

    /// <summary>
    /// Returns once the engine has told its peers the set last given to <see cref="AnnounceAsync"/> (BGP: every
    /// established session was sent exactly those routes), so a drain can answer when the routers know.
    /// Engines that cannot tell return at once.
    /// </summary>
    Task SettleAsync(CancellationToken ct) => Task.CompletedTask;

    /// <summary>
    /// The node was drained (true) or undrained. <see cref="AnnounceAsync"/> is told no VIPs meanwhile; an engine
    /// with a role gives it up too (VRRP: FAULT, so the peer takes the VIPs at once). Others do nothing.
    /// </summary>
    Task DrainAsync(bool drained, CancellationToken ct) => Task.CompletedTask;

    /// <summary>Withdraws everything this node announces (VRRP: the peer takes over) and stops.</summary>
    Task StopAsync(CancellationToken ct);

    AnnouncerState State { get; }

    /// <summary>Raised after <see cref="State"/> changed (on an arbitrary thread).</summary>
    event Action<AnnouncerState>? Changed;
}

/// <summary>The node's role in its VRRP instance. A BGP announcer has no role (<see cref="None"/>) and reports per VIP.</summary>
public enum AnnouncerRole
{
    None,
    /// <summary>Starting: the engine has not reported a state yet.</summary>
    Init,
    Master,
    Backup,
    /// <summary>The engine cannot hold the VIPs (interface down, engine not running).</summary>
    Fault,
    Stopped,
}

/// <summary>One VIP and whether this node currently announces it (VRRP: holds it; BGP: its route is announced).</summary>
public sealed record VipState(IPAddress Address, bool Announced, bool Management = false);

/// <summary>A snapshot of an announcer.</summary>
/// <param name="Mode">static, vrrp or bgp.</param>
/// <param name="Role">VRRP role; <see cref="AnnouncerRole.None"/> where roles do not apply.</param>
/// <param name="Vips">Every VIP the announcer is responsible for, management VIP first.</param>
/// <param name="Healthy">False while the engine is down or in FAULT: /readyz reports the node not ready.</param>
/// <param name="Detail">A sentence for a person (what the engine last said, why it is unhealthy).</param>
/// <param name="Since">When <paramref name="Role"/> last changed.</param>
/// <param name="Restarts">How often the engine had to be restarted.</param>
public sealed record AnnouncerState(string Mode, AnnouncerRole Role, IReadOnlyList<VipState> Vips, bool Healthy, string Detail, DateTimeOffset? Since, long Restarts = 0)
{
    /// <summary>MASTER, BACKUP, FAULT, INIT, STOPPED, or empty where roles do not apply.</summary>
    public string RoleName => Role == AnnouncerRole.None ? "" : Role.ToString().ToUpperInvariant();
}

/// <summary>The one way announcers compare VIP sets: distinct, IPv4-mapped addresses as IPv4, IPv4 first, in address order.</summary>
public static class VipSet
{
    public static IReadOnlyList<IPAddress> Normalize(IEnumerable<IPAddress> vips) =>
        vips.Select(v => v.IsIPv4MappedToIPv6 ? v.MapToIPv4() : v)
            .Distinct()
            .OrderBy(v => v.AddressFamily == AddressFamily.InterNetwork ? 0 : 1)
            .ThenBy(v => Convert.ToHexString(v.GetAddressBytes()), StringComparer.Ordinal)
            .ToList();
}
