using Merlin.Model;

namespace Merlin.Store;

/// <summary>A real server record as the store holds it; see <see cref="StoredService"/>.</summary>
public abstract class StoredServer
{
    public abstract string ServiceId { get; }

    /// <summary>The record's own <c>ip:port</c>, as written in it (IPv6 unbracketed, as the store's keys are).</summary>
    public abstract string Endpoint { get; }

    /// <summary>What the record decodes to; null when it cannot be programmed (<see cref="Problem"/> says why).</summary>
    public abstract RealServer? Server { get; }

    /// <inheritdoc cref="StoredService.Problem"/>
    public abstract string? Problem { get; }

    /// <inheritdoc cref="StoredService.WrittenByMerlin"/>
    public abstract bool WrittenByMerlin { get; }
}
