using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;

namespace Merlin.Api;

/// <summary>
/// What a node says of itself (the Status RPC, <c>/status</c>, the status page), in the model's terms; the API
/// puts it on the wire (<see cref="StatusWireMapper"/>).
/// </summary>
public sealed record NodeStatus
{
    public required string Version { get; init; }
    public required string StoreBackend { get; init; }
    public bool StoreReachable { get; init; }
    public required string Dataplane { get; init; }

    /// <summary>Time since the last reconcile pass ended; null before the first.</summary>
    public TimeSpan? SinceLastReconcile { get; init; }

    public long ReconcilePasses { get; init; }
    public long ReconcileErrors { get; init; }
    public long OperationsApplied { get; init; }
    public string? LastError { get; init; }

    /// <summary>Services and servers in the desired state.</summary>
    public int Services { get; init; }

    public int Servers { get; init; }

    /// <summary>Programmed from a reachable store.</summary>
    public bool Ready { get; init; }

    /// <summary>Store records not last written by a Merlin that marks its writes, and orphaned server keys; null until the store was read.</summary>
    public RecordOrigins? Origins { get; init; }

    public IReadOnlyList<SysctlStatus> Sysctls { get; init; } = [];

    /// <summary>Conditions that keep part of the desired state from working, one line each.</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>Servers with a health check, by verdict.</summary>
    public int ServersUp { get; init; }

    public int ServersDown { get; init; }
    public int ServersUnknown { get; init; }

    /// <summary>Who holds the VIPs (static, vrrp, bgp).</summary>
    public required string Announcer { get; init; }

    /// <summary>VRRP: MASTER, BACKUP, FAULT, INIT or STOPPED; empty where roles do not apply.</summary>
    public string AnnouncerState { get; init; } = "";

    public bool AnnouncerHealthy { get; init; }
    public string AnnouncerDetail { get; init; } = "";
    public long AnnouncerRestarts { get; init; }
    public DateTimeOffset? AnnouncerSince { get; init; }
    public IReadOnlyList<VipStatus> Vips { get; init; } = [];
    public bool NodeDrained { get; init; }

    /// <summary>md-table services' tables as the dataplane programs them (none from a dataplane that does not).</summary>
    public IReadOnlyList<ProgrammedTable> Tables { get; init; } = [];
}

/// <summary>Counts of the store's records by who wrote them last (<see cref="NodeStatus.Origins"/>).</summary>
public sealed record RecordOrigins(int ServicesNotByMerlin, int ServersNotByMerlin, int OrphanedServers);

/// <summary>A VIP as the announcer holds it: here (VRRP) or announced (BGP), and whether it is the management VIP.</summary>
public sealed record VipStatus(IPAddress Address, bool Announced, bool Management);

/// <summary>The dataplane's traffic counters (no services when it has none).</summary>
public sealed record NodeCounters(string Dataplane, IReadOnlyList<ServiceCounters> Services);

/// <summary>What this node's health checks say of one real server.</summary>
public sealed record ServerHealthStatus(ServiceKey Service, RealServerKey Server, HealthVerdict Verdict, string Detail, DateTimeOffset? Since);
