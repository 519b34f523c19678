using System.Net;
using System.Net.Sockets;
using System.Text;
using Merlin.Testing;

namespace Merlin.Linux.Tests;

/// <summary>
/// Descriptors made in a namespace by <see cref="NetworkNamespace"/>'s windows keep answering for it from any
/// thread, and no thread stays behind in it.
/// </summary>
public sealed class NetworkNamespaceTests
{
    private const string Forwarding = "/proc/sys/net/ipv4/ip_forward"; // per namespace; 0 in a new one

    [Fact]
    public async Task ASysctlFileOpenedInANamespace_ReadsAndWritesThatNamespacesValue_FromAnyThread()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("sysctl");
        var host = File.ReadAllText(Forwarding);
        Assert.Equal("0", ns.Exec("cat", Forwarding).Trim());

        using (var write = NetworkNamespace.OpenFile(ns.Name, Forwarding, FileMode.Truncate, FileAccess.Write))
        using (var read = NetworkNamespace.OpenFile(ns.Name, Forwarding, FileMode.Open, FileAccess.Read))
        {
            // Another thread, which never entered the namespace, does the writing and the reading.
            var seen = await Task.Run(() =>
            {
                RandomAccess.Write(write, "1\n"u8, 0);
                var buffer = new byte[16];
                return Encoding.ASCII.GetString(buffer, 0, RandomAccess.Read(read, buffer, 0)).Trim();
            }, TestContext.Current.CancellationToken);
            Assert.Equal("1", seen);
        }
        Assert.Equal("1", ns.Exec("cat", Forwarding).Trim());
        Assert.Equal(host, File.ReadAllText(Forwarding)); // this namespace's own is untouched
        Assert.Empty(ThreadNamespaces.In(ns));
    }

    [Fact]
    public void AFileThatIsNotThere_OrANamespaceThatIsNot_IsRefused()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("nofile");
        Assert.Throws<FileNotFoundException>(() => NetworkNamespace.OpenFile(ns.Name, "/proc/sys/net/merlin/none", FileMode.Open, FileAccess.Read));
        var missing = $"mt-none-{Guid.NewGuid():N}"[..20];
        Assert.Throws<FileNotFoundException>(() => NetworkNamespace.OpenFile(missing, Forwarding, FileMode.Open, FileAccess.Read));
        Assert.Throws<FileNotFoundException>(() => NetworkNamespace.CreateSocket(missing, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        Assert.Throws<ArgumentOutOfRangeException>(() => NetworkNamespace.OpenFile(ns.Name, Forwarding, FileMode.Create, FileAccess.Write));
    }

    [Fact]
    public async Task ASocketMadeInANamespace_ListensThere_AndIsUsedFromHere()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("socket");
        using var listener = NetworkNamespace.CreateSocket(ns.Name, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(4);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var ct = TestContext.Current.CancellationToken;

        // Reached from a socket made in the same namespace, over its own loopback.
        using (var client = NetworkNamespace.CreateSocket(ns.Name, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), ct);
            using var accepted = await listener.AcceptAsync(ct);
        }

        using (var netlink = NetlinkClient.Open(Netlink.ProtocolGeneric, new NetlinkSocketOptions { NetworkNamespace = ns.Name }))
            Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(netlink, "nlctrl").Name);
        Assert.Empty(ThreadNamespaces.In(ns));
    }

    [Fact]
    public void ANetlinkSocketInANamespace_IsMadeThere_AndConfiguredHere()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("netlink");
        using var inside = new ManagedCodeInside(ns);
        // A setting refused while configuring the socket: the error is raised here, not in the namespace.
        var options = new NetlinkSocketOptions { NetworkNamespace = ns.Name, ReceiveTimeout = TimeSpan.Zero };
        Assert.Throws<ArgumentOutOfRangeException>(() => NetlinkSocket.Open(Netlink.ProtocolGeneric, options));
        using (var client = NetlinkClient.Open(Netlink.ProtocolGeneric, options with { ReceiveTimeout = TimeSpan.FromSeconds(5) }))
            Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name);
        Assert.Empty(inside.Seen);
        Assert.Empty(ThreadNamespaces.In(ns));
    }
}
