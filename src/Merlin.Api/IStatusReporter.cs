namespace Merlin.Api;

/// <summary>
/// Supplies the daemon's view for the Status, Counters and node-drain RPCs and the health verdicts in a list; the
/// API maps it to the wire (<see cref="StatusWireMapper"/>) and knows nothing of the reconciler.
/// </summary>
public interface IStatusReporter
{
    NodeStatus Report();

    /// <summary>The dataplane's traffic counters (no services when the dataplane has none).</summary>
    Task<NodeCounters> CountersAsync(CancellationToken ct);

    /// <summary>What this node's health checks say, one entry per checked server.</summary>
    IReadOnlyList<ServerHealthStatus> Health() => [];

    /// <summary>
    /// Drains this node (or ends its drain): its announcer withdraws every VIP and keeps them withdrawn until
    /// undrained. Returns once the announcer's peers were told; the status then says so. Throws
    /// <see cref="NodeDrainException"/> when the drain cannot be made.
    /// </summary>
    Task<NodeStatus> DrainNodeAsync(bool drain, CancellationToken ct) => throw new NodeDrainException("this daemon cannot drain its node");
}

/// <summary>A node drain that cannot be made (or recorded); the API answers FAILED_PRECONDITION with its message.</summary>
public sealed class NodeDrainException(string message, Exception? inner = null) : Exception(message, inner);
