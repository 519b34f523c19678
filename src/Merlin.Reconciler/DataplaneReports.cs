using Merlin.Model;

namespace Merlin.Reconciler;

/// <summary>A dataplane that can read the kernel's traffic counters (IPVS does). Read-only; any thread.</summary>
public interface IDataplaneCounters
{
    /// <summary>Counters of the services this dataplane owns, with their real servers.</summary>
    Task<IReadOnlyList<ServiceCounters>> ReadCountersAsync(CancellationToken ct);
}

/// <summary>Totals since the service or server was created in the kernel (or its counters were zeroed).</summary>
public readonly record struct TrafficCounters(ulong Connections, ulong InPackets, ulong OutPackets, ulong InBytes, ulong OutBytes);

public sealed record ServiceCounters(ServiceKey Service, TrafficCounters Totals, IReadOnlyList<ServerCounters> Servers);

public sealed record ServerCounters(RealServerKey Server, uint ActiveConnections, uint InactiveConnections, TrafficCounters Totals);

/// <summary>A dataplane that reports conditions an operator should see in <c>meradm status</c> and metrics.</summary>
public interface IDataplaneDiagnostics
{
    /// <summary>Kernel settings the dataplane depends on, as wanted and as found at the last pass.</summary>
    IReadOnlyList<SysctlStatus> Sysctls { get; }

    /// <summary>Things that keep part of the desired state from working, one line each; empty when all is well.</summary>
    IReadOnlyList<string> Warnings { get; }
}

/// <summary>
/// One sysctl: the value wanted, the value found (null if it could not be read), and whether the daemon
/// holds it (<c>--manage-sysctls</c>) or only reports it.
/// </summary>
public sealed record SysctlStatus(string Name, string Want, string? Have, bool Managed, string Why)
{
    public bool Drifted => Have != Want;
}
