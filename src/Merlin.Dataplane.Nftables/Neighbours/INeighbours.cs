using System.Net;
using System.Net.NetworkInformation;

namespace Merlin.Dataplane.Nftables.Neighbours;

/// <summary>The kernel's neighbour table of one interface: where DSR real servers' MACs come from.</summary>
internal interface INeighbours
{
    /// <summary>The interface's own MAC, or null if there is no such interface.</summary>
    Task<PhysicalAddress?> LinkAddressAsync(string device, CancellationToken ct);

    /// <summary>Every entry of <paramref name="device"/> with a usable link-layer address (not FAILED or INCOMPLETE).</summary>
    Task<IReadOnlyDictionary<IPAddress, PhysicalAddress>> ReadAsync(string device, CancellationToken ct);

    /// <summary>
    /// Makes the kernel resolve these addresses now and keep them resolved ("managed" neighbour
    /// entries, Linux 5.16+; older kernels get a one-off resolution).
    /// </summary>
    Task TrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct);

    /// <summary>Removes the managed entries of addresses no service uses any more.</summary>
    Task UntrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct);
}
