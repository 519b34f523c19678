using System.Net;

namespace Merlin.Dataplane.Abstractions;

/// <summary>
/// A dataplane that forwards to some real servers only once it has resolved their link-layer address
/// (nftables DSR writes each server's MAC into its maps). The announcer holds the VIPs back for a
/// short while when this is not empty, so a node does not attract traffic it would drop.
/// </summary>
public interface IUnresolvedServers
{
    /// <summary>Real servers whose address is not resolved yet: they take no traffic until it is.</summary>
    IReadOnlyList<IPAddress> UnresolvedServers { get; }
}
