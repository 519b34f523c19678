using Merlin.Model;

namespace Merlin.Dataplane.Abstractions;

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
