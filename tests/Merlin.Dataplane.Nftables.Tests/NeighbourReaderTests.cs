using System.Net;
using System.Net.NetworkInformation;
using System.Text.Json;
using Merlin.Dataplane.Nftables.Neighbours;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The neighbour table over rtnetlink agrees with what <c>ip -j</c> shows (real kernel, fresh namespace).</summary>
public class NeighbourReaderTests
{
    [Fact]
    public async Task Netlink_ReadsTheSameLinkAddressAndNeighboursAsIp()
    {
        using var ns = TestNamespace.WithInterface();
        ns.Ip("link", "set", "eth0", "address", "02:00:00:00:00:aa");
        ns.Ip("neigh", "replace", "198.18.7.11", "dev", "eth0", "lladdr", "02:00:c6:12:07:0b", "nud", "permanent");
        ns.Ip("neigh", "replace", "198.18.7.12", "dev", "eth0", "lladdr", "02:00:c6:12:07:0c", "nud", "reachable");
        ns.Ip("neigh", "replace", "198.18.7.13", "dev", "eth0", "nud", "failed");
        ns.Ip("neigh", "replace", "2001:db8::7:11", "dev", "eth0", "lladdr", "02:00:00:07:00:11", "nud", "permanent");
        ns.Ip("neigh", "replace", "198.18.7.14", "dev", "peer0", "lladdr", "02:00:c6:12:07:0e", "nud", "permanent");
        var neighbours = new NetlinkNeighbours(Given.Options() with { NetworkNamespace = ns.Name });

        var mac = await neighbours.LinkAddressAsync("eth0", TestContext.Current.CancellationToken);
        var table = await neighbours.ReadAsync("eth0", TestContext.Current.CancellationToken);

        Assert.Equal(PhysicalAddress.Parse("02-00-00-00-00-AA"), mac);
        Assert.Null(await neighbours.LinkAddressAsync("nosuch0", TestContext.Current.CancellationToken));
        var ip = IpJson.Neighbours(ns.Ip("-j", "neigh", "show", "dev", "eth0"));
        Assert.Equal(ip.OrderBy(e => e.Key.ToString()), table.OrderBy(e => e.Key.ToString()));
        Assert.Equal(PhysicalAddress.Parse("02-00-C6-12-07-0B"), table[IPAddress.Parse("198.18.7.11")]);
        Assert.Equal(PhysicalAddress.Parse("02-00-C6-12-07-0C"), table[IPAddress.Parse("198.18.7.12")]);
        Assert.Equal(PhysicalAddress.Parse("02-00-00-07-00-11"), table[IPAddress.Parse("2001:db8::7:11")]);
        Assert.False(table.ContainsKey(IPAddress.Parse("198.18.7.13")));   // failed: no usable address
        Assert.False(table.ContainsKey(IPAddress.Parse("198.18.7.14")));   // another interface's
    }

    [Fact]
    public async Task Tracked_AddressesBecomeManagedEntries_AsIpShowsThem_AndUntrackedOnesGo_ButNotSomeoneElses()
    {
        using var ns = TestNamespace.WithInterface();
        ns.Ip("addr", "add", "198.18.7.1/24", "dev", "eth0");
        ns.Ip("neigh", "replace", "198.18.7.23", "dev", "eth0", "lladdr", "02:00:c6:12:07:17", "nud", "permanent");   // configured by someone
        var neighbours = new NetlinkNeighbours(Given.Options() with { NetworkNamespace = ns.Name });
        IPAddress[] tracked = [IPAddress.Parse("198.18.7.21"), IPAddress.Parse("198.18.7.22"), IPAddress.Parse("2001:db8::7:21")];

        await neighbours.TrackAsync(tracked, "eth0", TestContext.Current.CancellationToken);

        Assert.Equal(tracked.Select(a => a.ToString()).Order(StringComparer.Ordinal),
            IpJson.Managed(ns.Ip("-j", "neigh", "show", "dev", "eth0")).Select(a => a.ToString()).Order(StringComparer.Ordinal));
        await neighbours.TrackAsync(tracked[..1], "eth0", TestContext.Current.CancellationToken);   // again: replaced, no error

        await neighbours.UntrackAsync([tracked[0], tracked[2], IPAddress.Parse("198.18.7.23"), IPAddress.Parse("198.18.7.99")], "eth0", TestContext.Current.CancellationToken);

        var shown = ns.Ip("-j", "neigh", "show", "dev", "eth0");
        Assert.Equal(["198.18.7.22"], IpJson.Managed(shown).Select(a => a.ToString()));
        Assert.Contains(IPAddress.Parse("198.18.7.23"), IpJson.Neighbours(shown).Keys);   // permanent, not ours: kept
        await Assert.ThrowsAsync<IOException>(() => neighbours.TrackAsync(tracked, "nosuch0", TestContext.Current.CancellationToken));
    }
}

/// <summary><c>ip -j neigh show</c>'s output, read as the dataplane reads the kernel: the oracle of the tests above.</summary>
internal static class IpJson
{
    /// <summary>Entries with a usable MAC (not FAILED or INCOMPLETE, not all zeros).</summary>
    public static Dictionary<IPAddress, PhysicalAddress> Neighbours(string json)
    {
        var entries = new Dictionary<IPAddress, PhysicalAddress>();
        using var document = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "[]" : json);
        foreach (var entry in document.RootElement.EnumerateArray())
        {
            if (!entry.TryGetProperty("dst", out var dst) || !IPAddress.TryParse(dst.GetString(), out var address)) continue;
            if (!entry.TryGetProperty("lladdr", out var lladdr) || lladdr.GetString() is not { Length: 17 } text) continue;
            var mac = PhysicalAddress.Parse(text.Replace(':', '-'));
            if (mac.GetAddressBytes().All(b => b == 0)) continue;
            if (entry.TryGetProperty("state", out var state) && state.ValueKind == JsonValueKind.Array &&
                state.EnumerateArray().Any(s => s.GetString() is "FAILED" or "INCOMPLETE")) continue;
            entries[address] = mac;
        }
        return entries;
    }

    /// <summary>The addresses of managed entries.</summary>
    public static HashSet<IPAddress> Managed(string json)
    {
        var result = new HashSet<IPAddress>();
        using var document = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "[]" : json);
        foreach (var entry in document.RootElement.EnumerateArray())
            if (entry.TryGetProperty("managed", out _) && entry.TryGetProperty("dst", out var dst) && IPAddress.TryParse(dst.GetString(), out var address))
                result.Add(address);
        return result;
    }
}
