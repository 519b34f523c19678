using System.Net;
using Merlin.Testing;

namespace Merlin.Linux.Tests;

/// <summary>rtnetlink links, addresses and neighbours: the exact bytes iproute2 sends for the same requests, and a real kernel.</summary>
public class RtnetlinkTests
{
    private static string Encode(Action<NetlinkBuffer> write)
    {
        using var buffer = new NetlinkBuffer();
        write(buffer);
        return Convert.ToHexStringLower(buffer.WrittenSpan);
    }

    // nlmsghdr as ip writes it before rtnl_talk stamps the sequence (zeroed here): length, type, flags.
    private static string Header(int length, string type, string flags) => $"{length:x2}000000{type}{flags}0000000000000000";

    [Fact]
    public void AManagedEntry_IsWhatIpNeighReplaceManagedSends()
    {
        // strace of `ip neigh replace 198.18.5.9 dev d0 managed` (iproute2 6.1, d0 = index 3): RTM_NEWNEIGH,
        // REQUEST|ACK|REPLACE|CREATE, ndmsg { AF_INET, ifindex 3, NUD_NONE }, NDA_DST, NDA_FLAGS_EXT NTF_EXT_MANAGED.
        Assert.Equal(
            Header(44, "1c00", "0505") + "02000000" + "03000000" + "0000" + "00" + "00" + "08000100c6120509" + "08000f0001000000",
            Encode(b => Rtnetlink.WriteManagedNeighbour(new NetlinkWriter(b), 3, IPAddress.Parse("198.18.5.9"))));
    }

    [Fact]
    public void AOneOffResolution_IsWhatIpNeighReplaceUseSends()
    {
        // `ip neigh replace 198.18.5.10 dev d0 use`: NUD_PERMANENT, NTF_USE, NDA_DST.
        Assert.Equal(
            Header(36, "1c00", "0505") + "02000000" + "03000000" + "8000" + "01" + "00" + "08000100c612050a",
            Encode(b => Rtnetlink.WriteResolveNeighbourOnce(new NetlinkWriter(b), 3, IPAddress.Parse("198.18.5.10"))));
    }

    [Fact]
    public void ADelete_IsWhatIpNeighDelSends_AndIPv6TakesItsFamilyAndSixteenBytes()
    {
        // `ip neigh del 198.18.5.9 dev d0`: RTM_DELNEIGH, REQUEST|ACK, NUD_PERMANENT.
        Assert.Equal(
            Header(36, "1d00", "0500") + "02000000" + "03000000" + "8000" + "00" + "00" + "08000100c6120509",
            Encode(b => Rtnetlink.WriteDeleteNeighbour(new NetlinkWriter(b), 3, IPAddress.Parse("198.18.5.9"))));
        Assert.Equal(
            Header(56, "1c00", "0505") + "0a000000" + "07000000" + "0000" + "00" + "00" + "1400010020010db8000000000000000000070021" + "08000f0001000000",
            Encode(b => Rtnetlink.WriteManagedNeighbour(new NetlinkWriter(b), 7, IPAddress.Parse("2001:db8::7:21"))));
    }

    [Fact]
    public void AnAddressAdd_IsWhatIpAddrAddSends()
    {
        // strace -e write=3 of `ip addr add 198.18.0.100/32 dev lo` (iproute2 6.1): RTM_NEWADDR,
        // REQUEST|ACK|EXCL|CREATE, ifaddrmsg { AF_INET, /32, no flags, scope universe, lo = 1 }, IFA_LOCAL, IFA_ADDRESS.
        Assert.Equal(
            Header(40, "1400", "0506") + "02200000" + "01000000" + "08000200c6120064" + "08000100c6120064",
            Encode(b => Rtnetlink.WriteAddAddress(new NetlinkWriter(b), 1, IPAddress.Parse("198.18.0.100"), 32)));
    }

    [Fact]
    public void AnIPv6AddressAddWithoutDad_IsWhatIpAddrAddNodadSends()
    {
        // `ip addr add 2001:db8::1/128 dev lo nodad`: AF_INET6, /128, IFA_F_NODAD in ifa_flags, 16-byte attributes.
        Assert.Equal(
            Header(64, "1400", "0506") + "0a800200" + "01000000" + "1400020020010db8000000000000000000000001" + "1400010020010db8000000000000000000000001",
            Encode(b => Rtnetlink.WriteAddAddress(new NetlinkWriter(b), 1, IPAddress.Parse("2001:db8::1"), 128, noDuplicateDetection: true)));
    }

    [Fact]
    public void AnAddressDelete_IsWhatIpAddrDelSends()
    {
        // `ip addr del 198.18.0.100/32 dev lo`: RTM_DELADDR, REQUEST|ACK, the same body as the add.
        Assert.Equal(
            Header(40, "1500", "0500") + "02200000" + "01000000" + "08000200c6120064" + "08000100c6120064",
            Encode(b => Rtnetlink.WriteDeleteAddress(new NetlinkWriter(b), 1, IPAddress.Parse("198.18.0.100"), 32)));
    }

    [Fact]
    public void AnAddressWithTooLongAPrefix_IsRefusedNamingIt()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            Encode(b => Rtnetlink.WriteAddAddress(new NetlinkWriter(b), 1, IPAddress.Parse("198.18.0.100"), 33)));
        Assert.Equal("prefixLength", e.ParamName);
        Assert.Contains("at most 32", e.Message);
    }

    [Fact]
    public void InANamespace_AddressesAddedOnLo_AreListedByIpAndByTheDump_AndGoAgain()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("rtnl-addr");
        using var client = NetlinkClient.Open(Netlink.ProtocolRoute, new NetlinkSocketOptions { NetworkNamespace = ns.Name });
        var lo = Rtnetlink.Link(client, "lo")!.Index;
        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteAddAddress(new NetlinkWriter(buffer), lo, IPAddress.Parse("198.18.7.1"), 32);
            Rtnetlink.WriteAddAddress(new NetlinkWriter(buffer), lo, IPAddress.Parse("2001:db8::7:1"), 128, noDuplicateDetection: true);
            client.ExecuteBatch(buffer, i => $"add {i}", ct: TestContext.Current.CancellationToken).ThrowIfFailed();
        }

        var shown = ScratchNamespace.Run("ip", ["-n", ns.Name, "-o", "addr", "show", "dev", "lo"]);
        Assert.Contains("inet 198.18.7.1/32 scope global lo", shown);
        Assert.Contains("inet6 2001:db8::7:1/128 scope global nodad", shown);
        Assert.Superset(
            new HashSet<InterfaceAddress> { new(lo, IPAddress.Parse("198.18.7.1"), 32), new(lo, IPAddress.Parse("2001:db8::7:1"), 128), new(lo, IPAddress.Loopback, 8) },
            Rtnetlink.Addresses(client, lo).ToHashSet());

        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteAddAddress(new NetlinkWriter(buffer), lo, IPAddress.Parse("198.18.7.1"), 32);
            Assert.Equal(Errno.EEXIST, Assert.Throws<NetlinkException>(() => client.Execute(buffer, "add again")).Errno);
        }
        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteDeleteAddress(new NetlinkWriter(buffer), lo, IPAddress.Parse("198.18.7.1"), 32);
            client.Execute(buffer, "delete");
        }
        Assert.DoesNotContain(Rtnetlink.Addresses(client, lo), a => a.Address.Equals(IPAddress.Parse("198.18.7.1")));
        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteDeleteAddress(new NetlinkWriter(buffer), lo, IPAddress.Parse("198.18.7.1"), 32);
            Assert.Equal(Errno.EADDRNOTAVAIL, Assert.Throws<NetlinkException>(() => client.Execute(buffer, "delete again")).Errno);
        }
    }

    [Fact]
    public void TheReads_AskForOneLinkByName_AndDumpNeighboursOfBothFamilies()
    {
        var kernel = new FakeKernel();
        using var client = new NetlinkClient(() => kernel);
        kernel.Respond = m => m.Type == Rtnetlink.GetLink ? [Wire.Error(m.Sequence, m.PortId, Errno.ENODEV, m.Type).ToArray()] : [Wire.Done(m.Sequence, m.PortId).ToArray()];

        Assert.Null(Rtnetlink.Link(client, "eth0"));
        Assert.Empty(Rtnetlink.Neighbours(client, 3));

        // RTM_GETLINK { ifinfomsg zeroed, IFLA_IFNAME "eth0" }; RTM_GETNEIGH { ndmsg zeroed: AF_UNSPEC } as a dump.
        Assert.Equal(Header(44, "1200", "0100") + new string('0', 32) + "090003006574683000000000", kernel.Messages[0].Hex.ToLowerInvariant());
        Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Ack, kernel.Messages[0].Flags);
        Assert.Equal(Header(28, "1e00", "0100") + new string('0', 24), kernel.Messages[1].Hex.ToLowerInvariant());
        Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Dump, kernel.Messages[1].Flags);
    }

    [Fact]
    public void InANamespace_ManagedEntriesAppear_AsIpListsThem_AndGoAgain()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("rtnl");
        ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "v0", "up"]);
        ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "v1", "up"]);
        ScratchNamespace.Run("ip", ["-n", ns.Name, "addr", "add", "198.18.6.1/24", "dev", "v0"]);
        using var client = NetlinkClient.Open(Netlink.ProtocolRoute, new NetlinkSocketOptions { NetworkNamespace = ns.Name });
        var link = Rtnetlink.Link(client, "v0");
        Assert.NotNull(link);

        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteManagedNeighbour(new NetlinkWriter(buffer), link.Index, IPAddress.Parse("198.18.6.9"));
            Rtnetlink.WriteManagedNeighbour(new NetlinkWriter(buffer), link.Index, IPAddress.Parse("198.18.6.10"));
            client.ExecuteBatch(buffer, i => $"managed {i}", ct: TestContext.Current.CancellationToken).ThrowIfFailed();
        }

        var shown = ScratchNamespace.Run("ip", ["-n", ns.Name, "neigh", "show", "dev", "v0"]);
        Assert.Contains("198.18.6.9 managed", shown);
        Assert.Contains("198.18.6.10 managed", shown);
        var read = Rtnetlink.Neighbours(client, link.Index);
        Assert.Equal(["198.18.6.10", "198.18.6.9"], read.Where(e => e.Managed).Select(e => e.Address.ToString()).Order(StringComparer.Ordinal));

        using (var buffer = new NetlinkBuffer())
        {
            Rtnetlink.WriteDeleteNeighbour(new NetlinkWriter(buffer), link.Index, IPAddress.Parse("198.18.6.9"));
            client.Execute(buffer, "delete");
        }
        shown = ScratchNamespace.Run("ip", ["-n", ns.Name, "neigh", "show", "dev", "v0"]);
        Assert.DoesNotContain("198.18.6.9 ", shown);
        Assert.Contains("198.18.6.10 managed", shown);
    }
}
