using System.Net;
using System.Net.NetworkInformation;
using Merlin.Linux;

namespace Merlin.Dataplane.Nftables.Neighbours;

/// <summary>
/// The neighbour table over rtnetlink (Merlin.Linux's <see cref="Rtnetlink"/>): RTM_GETLINK and
/// RTM_GETNEIGH to read, RTM_NEWNEIGH / RTM_DELNEIGH to track, all on one socket a call, no process (two
/// <c>ip</c> processes were 10–40 ms of every resync on a busy machine, and <c>ip -batch</c> one more per
/// change set). A kernel failure is an <see cref="IOException"/>, as the dataplane expects of this seam.
/// </summary>
internal sealed class NetlinkNeighbours(NftablesOptions options) : INeighbours
{
    /// <summary>Null also when the link cannot be read: the dataplane keeps the MAC it knew (a hiccup must not take DSR down).</summary>
    public async Task<PhysicalAddress?> LinkAddressAsync(string device, CancellationToken ct)
    {
        try
        {
            return await Run(client => Rtnetlink.Link(client, device)?.Address is { } mac && Usable(mac) ? mac : null, ct);
        }
        catch (IOException)
        {
            return null;
        }
    }

    public Task<IReadOnlyDictionary<IPAddress, PhysicalAddress>> ReadAsync(string device, CancellationToken ct) => Run(client =>
    {
        var link = Rtnetlink.Link(client, device) ?? throw new IOException($"no interface {device}");
        return (IReadOnlyDictionary<IPAddress, PhysicalAddress>)Usable(Rtnetlink.Neighbours(client, link.Index));
    }, ct);

    /// <summary>
    /// Managed entries (Linux 5.16+) for every address, in as few sends as the client batches them; an
    /// address the kernel refuses that for (an older kernel) gets a one-off resolution (NTF_USE) instead.
    /// </summary>
    public Task TrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct) => addresses.Count == 0 ? Task.CompletedTask : Run(client =>
    {
        var link = Rtnetlink.Link(client, device) ?? throw new IOException($"no interface {device}");
        var list = addresses.ToList();
        var managed = Batch(client, list, (w, a) => Rtnetlink.WriteManagedNeighbour(w, link.Index, a), "RTM_NEWNEIGH managed", device, ct);
        if (managed.Succeeded) return 0;
        var retry = managed.Failures.Select(f => list[f.Index]).ToList();
        var once = Batch(client, retry, (w, a) => Rtnetlink.WriteResolveNeighbourOnce(w, link.Index, a), "RTM_NEWNEIGH use", device, ct);
        if (!once.Succeeded) throw new IOException(once.Failures[0].Error.Message, once.Failures[0].Error);
        return 0;
    }, ct);

    /// <summary>Deletes the managed entries among <paramref name="addresses"/>: a permanent entry someone configured stays. One already gone is no error.</summary>
    public Task UntrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct) => addresses.Count == 0 ? Task.CompletedTask : Run(client =>
    {
        if (Rtnetlink.Link(client, device) is not { } link) return 0;
        var managed = Rtnetlink.Neighbours(client, link.Index).Where(e => e.Managed).Select(e => e.Address).ToHashSet();
        var remove = addresses.Where(managed.Contains).ToList();
        if (remove.Count == 0) return 0;
        var result = Batch(client, remove, (w, a) => Rtnetlink.WriteDeleteNeighbour(w, link.Index, a), "RTM_DELNEIGH", device, ct);
        var failure = result.Failures.FirstOrDefault(f => f.Error.Errno != Errno.ENOENT);
        if (failure.Error is { } error) throw new IOException(error.Message, error);
        return 0;
    }, ct);

    /// <summary>
    /// The entries <c>ip neigh show</c> would list with a usable MAC: in some state other than NOARP (its
    /// default filter; NOARP entries are multicast and the like), and of those not FAILED or INCOMPLETE.
    /// </summary>
    internal static Dictionary<IPAddress, PhysicalAddress> Usable(IEnumerable<NeighbourEntry> entries)
    {
        var usable = new Dictionary<IPAddress, PhysicalAddress>();
        foreach (var entry in entries)
        {
            if ((entry.State & 0xff & ~Rtnetlink.StateNoArp) == 0 || (entry.State & (Rtnetlink.StateIncomplete | Rtnetlink.StateFailed)) != 0) continue;
            if (entry.LinkAddress is { } mac && Usable(mac)) usable[entry.Address] = mac;
        }
        return usable;
    }

    /// <summary>An Ethernet address (6 bytes) that is not all zeros.</summary>
    internal static bool Usable(PhysicalAddress mac)
    {
        var bytes = mac.GetAddressBytes();
        return bytes.Length == 6 && bytes.Any(b => b != 0);
    }

    private delegate void Encode(NetlinkWriter writer, IPAddress address);

    private static NetlinkBatchResult Batch(NetlinkClient client, List<IPAddress> addresses, Encode encode, string what, string device, CancellationToken ct)
    {
        using var buffer = new NetlinkBuffer();
        foreach (var address in addresses) encode(new NetlinkWriter(buffer), address);
        return client.ExecuteBatch(buffer, i => $"{what} {addresses[i]} dev {device}", ct: ct);
    }

    /// <summary>Runs <paramref name="read"/> on a pool thread with an rtnetlink client in the dataplane's namespace.</summary>
    private Task<T> Run<T>(Func<NetlinkClient, T> read, CancellationToken ct) => Task.Run(() =>
    {
        try
        {
            using var client = NetlinkClient.Open(Merlin.Linux.Netlink.ProtocolRoute, new NetlinkSocketOptions { NetworkNamespace = options.NetworkNamespace });
            return read(client);
        }
        catch (Exception e) when (e is NetlinkException or NetlinkTimeoutException or NetlinkDecodeException)
        {
            throw new IOException(e.Message, e);
        }
    }, ct);
}
