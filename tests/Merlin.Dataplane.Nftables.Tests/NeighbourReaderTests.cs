using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Neighbours;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The neighbour table read over rtnetlink gives what <c>ip -j</c> gives (real kernel, fresh namespace).</summary>
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
        var options = Given.Options() with { NetworkNamespace = ns.Name };
        var neighbours = new IpNeighbours(options, new ProcessRunner(ns.Name, options.IpPath));

        var mac = await neighbours.LinkAddressAsync("eth0", CancellationToken.None);
        var table = await neighbours.ReadAsync("eth0", CancellationToken.None);

        Assert.Equal(PhysicalAddress.Parse("02-00-00-00-00-AA"), mac);
        Assert.Null(await neighbours.LinkAddressAsync("nosuch0", CancellationToken.None));
        var ip = IpNeighbours.Parse(ns.Ip("-j", "neigh", "show", "dev", "eth0"));
        Assert.Equal(ip.OrderBy(e => e.Key.ToString()), table.OrderBy(e => e.Key.ToString()));
        Assert.Equal(PhysicalAddress.Parse("02-00-C6-12-07-0B"), table[IPAddress.Parse("198.18.7.11")]);
        Assert.Equal(PhysicalAddress.Parse("02-00-C6-12-07-0C"), table[IPAddress.Parse("198.18.7.12")]);
        Assert.Equal(PhysicalAddress.Parse("02-00-00-07-00-11"), table[IPAddress.Parse("2001:db8::7:11")]);
        Assert.False(table.ContainsKey(IPAddress.Parse("198.18.7.13")));   // failed: no usable address
        Assert.False(table.ContainsKey(IPAddress.Parse("198.18.7.14")));   // another interface's
    }
}
