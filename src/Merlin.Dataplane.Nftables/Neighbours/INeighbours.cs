using System.Net;
using System.Net.NetworkInformation;
using System.Text.Json;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Netlink;

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

/// <summary>
/// Reads over rtnetlink (RTM_GETLINK, RTM_GETNEIGH: one socket, no process; a resync reads both, and
/// two <c>ip</c> processes were 10–40 ms of every pass on a busy machine); changes through iproute2's
/// <c>ip -batch</c> (one process per change set). A read that netlink cannot answer falls back to
/// <c>ip -j</c>.
/// </summary>
internal sealed class IpNeighbours(NftablesOptions options, ICommandRunner runner) : INeighbours
{
    public async Task<PhysicalAddress?> LinkAddressAsync(string device, CancellationToken ct)
    {
        try
        {
            return await Task.Run(() =>
            {
                using var client = OpenRoute();
                var mac = Rtnetlink.Link(client, device)?.Address;
                return mac is not null && TryMac(Text(mac.GetAddressBytes()), out var usable) ? usable : null;
            }, ct);
        }
        catch (Exception e) when (e is NetlinkException or NetlinkTimeoutException or NetlinkDecodeException)
        {
            return await IpLinkAddressAsync(device, ct);
        }
    }

    private async Task<PhysicalAddress?> IpLinkAddressAsync(string device, CancellationToken ct)
    {
        var result = await runner.RunAsync(options.IpPath, ["-j", "link", "show", "dev", device], null, ct);
        if (result.ExitCode != 0) return null;
        using var json = JsonDocument.Parse(result.Output);
        foreach (var link in json.RootElement.EnumerateArray())
            if (link.TryGetProperty("address", out var address) && TryMac(address.GetString(), out var mac)) return mac;
        return null;
    }

    public async Task<IReadOnlyDictionary<IPAddress, PhysicalAddress>> ReadAsync(string device, CancellationToken ct)
    {
        try
        {
            var entries = await Task.Run(() =>
            {
                using var client = OpenRoute();
                var link = Rtnetlink.Link(client, device) ?? throw new IOException($"no interface {device}");
                return Usable(Rtnetlink.Neighbours(client, link.Index));
            }, ct);
            return entries;
        }
        catch (Exception e) when (e is IOException or NetlinkException or NetlinkTimeoutException or NetlinkDecodeException)
        {
            return await IpReadAsync(device, ct);
        }
    }

    private async Task<IReadOnlyDictionary<IPAddress, PhysicalAddress>> IpReadAsync(string device, CancellationToken ct)
    {
        var result = await runner.RunAsync(options.IpPath, ["-j", "neigh", "show", "dev", device], null, ct);
        if (result.ExitCode != 0) throw new IOException($"ip neigh show dev {device}: {result.Error.Trim()}");
        return Parse(result.Output);
    }

    internal static Dictionary<IPAddress, PhysicalAddress> Parse(string json)
    {
        var entries = new Dictionary<IPAddress, PhysicalAddress>();
        using var document = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "[]" : json);
        foreach (var entry in document.RootElement.EnumerateArray())
        {
            if (!entry.TryGetProperty("dst", out var dst) || !IPAddress.TryParse(dst.GetString(), out var address)) continue;
            if (!entry.TryGetProperty("lladdr", out var lladdr) || !TryMac(lladdr.GetString(), out var mac)) continue;
            if (entry.TryGetProperty("state", out var state) && state.ValueKind == JsonValueKind.Array &&
                state.EnumerateArray().Any(s => s.GetString() is "FAILED" or "INCOMPLETE")) continue;
            entries[address] = mac;
        }
        return entries;
    }

    public async Task TrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct)
    {
        if (addresses.Count == 0) return;
        var managed = await Batch(addresses.Select(a => $"neigh replace {a} dev {device} managed"), ct);
        if (managed.ExitCode == 0) return;
        // A kernel before 5.16 has no managed entries: ask for one resolution instead.
        var use = await Batch(addresses.Select(a => $"neigh replace {a} dev {device} use"), ct);
        if (use.ExitCode != 0) throw new IOException($"ip neigh replace … dev {device}: {use.Error.Trim()}");
    }

    public async Task UntrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct)
    {
        if (addresses.Count == 0) return;
        // Only entries we made managed: a permanent entry someone configured stays.
        var result = await runner.RunAsync(options.IpPath, ["-j", "neigh", "show", "dev", device], null, ct);
        if (result.ExitCode != 0) return;
        var managed = Managed(result.Output);
        var remove = addresses.Where(managed.Contains).ToList();
        // -force: an entry already gone is not an error.
        if (remove.Count > 0) await Batch(remove.Select(a => $"neigh del {a} dev {device}"), ct);
    }

    internal static HashSet<IPAddress> Managed(string json)
    {
        var result = new HashSet<IPAddress>();
        using var document = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "[]" : json);
        foreach (var entry in document.RootElement.EnumerateArray())
            if (entry.TryGetProperty("managed", out _) && entry.TryGetProperty("dst", out var dst) && IPAddress.TryParse(dst.GetString(), out var address))
                result.Add(address);
        return result;
    }

    private Task<CommandResult> Batch(IEnumerable<string> commands, CancellationToken ct) =>
        runner.RunAsync(options.IpPath, ["-force", "-batch", "-"], string.Join("\n", commands) + "\n", ct);

    internal static bool TryMac(string? text, out PhysicalAddress mac)
    {
        mac = PhysicalAddress.None;
        if (text is null || text.Length != 17) return false;
        if (!PhysicalAddress.TryParse(text.Replace(':', '-'), out var parsed) || parsed is null) return false;
        if (parsed.GetAddressBytes().All(b => b == 0)) return false;
        mac = parsed;
        return true;
    }

    private NetlinkClient OpenRoute() => NetlinkClient.Open(Netlink.Netlink.ProtocolRoute, new NetlinkSocketOptions { NetworkNamespace = options.NetworkNamespace });

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
            if (entry.LinkAddress is { } mac && TryMac(Text(mac.GetAddressBytes()), out var m)) usable[entry.Address] = m;
        }
        return usable;
    }

    /// <summary>A link-layer address as ip prints it (aa:bb:…), so both readers apply the same rules.</summary>
    private static string Text(ReadOnlySpan<byte> bytes) => string.Join(':', bytes.ToArray().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
}
