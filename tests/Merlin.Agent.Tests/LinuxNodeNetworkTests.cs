using System.Net;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>The agent's node changes against a real kernel, in a scratch namespace: what <c>ip</c> and /proc/sys show there.</summary>
public sealed class LinuxNodeNetworkTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task VipsAddedToLo_AreWhatIpShows_AndAddingOrRemovingTwiceIsNoError()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("agent-lo");
        var node = new LinuxNodeNetwork(ns.Name);
        IPAddress v4 = IPAddress.Parse("198.18.9.10"), v6 = IPAddress.Parse("2001:db8::9:10");

        await node.AddLoopbackAsync(v4, Ct);
        await node.AddLoopbackAsync(v6, Ct);
        await node.AddLoopbackAsync(v4, Ct);

        var shown = ns.Exec("ip", "-o", "addr", "show", "dev", "lo");
        Assert.Contains("inet 198.18.9.10/32 scope global lo", shown);
        Assert.Contains("inet6 2001:db8::9:10/128 scope global nodad", shown);
        Assert.Superset(new HashSet<IPAddress> { IPAddress.Loopback, v4, v6 }, new HashSet<IPAddress>(await node.LoopbackAddressesAsync(Ct)));

        await node.RemoveLoopbackAsync(v4, Ct);
        await node.RemoveLoopbackAsync(v4, Ct);
        await node.RemoveLoopbackAsync(v6, Ct);

        shown = ns.Exec("ip", "-o", "addr", "show", "dev", "lo");
        Assert.DoesNotContain("198.18.9.10", shown);
        Assert.DoesNotContain("2001:db8::9:10", shown);
        Assert.Contains("inet 127.0.0.1/8", shown);
    }

    [Fact]
    public async Task ASysctl_IsWrittenAndReadInTheNodesNamespaceOnly()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("agent-sysctl");
        var node = new LinuxNodeNetwork(ns.Name);
        var host = File.ReadAllText("/proc/sys/net/ipv4/conf/all/arp_announce").Trim();
        var other = host == "2" ? "1" : "2";

        await node.WriteSysctlAsync("net.ipv4.conf.all.arp_announce", other, Ct);

        Assert.Equal(other, await node.ReadSysctlAsync("net.ipv4.conf.all.arp_announce", Ct));
        Assert.Equal(other, ns.Exec("cat", "/proc/sys/net/ipv4/conf/all/arp_announce").Trim());
        Assert.Equal(host, File.ReadAllText("/proc/sys/net/ipv4/conf/all/arp_announce").Trim());
    }

    [Fact]
    public async Task AMissingSysctl_IsAnErrorNamingIt()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("agent-sysctl");
        var node = new LinuxNodeNetwork(ns.Name);

        var e = await Assert.ThrowsAsync<NodeNetworkException>(() => node.ReadSysctlAsync("net.ipv4.conf.all.no_such_setting", Ct));
        Assert.Contains("cannot read sysctl net.ipv4.conf.all.no_such_setting", e.Message);
    }
}
