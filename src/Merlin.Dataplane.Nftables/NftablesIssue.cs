using Merlin.Model;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Something the nftables dataplane holds in its state but cannot forward to: an unsupported service
/// or server, or a DSR server whose MAC is not known yet. Reported, never fatal; the service stays
/// in the state so the reconciler does not retry it forever.
/// </summary>
public sealed record NftablesIssue(ServiceKey Service, RealServerKey? Server, string Reason)
{
    /// <summary>The service's stored md-table could not be used as is and the node programs its recomputation.</summary>
    public bool StoredTable { get; init; }

    public override string ToString() => Server is { } server ? $"{Service} {server}: {Reason}" : $"{Service}: {Reason}";
}
