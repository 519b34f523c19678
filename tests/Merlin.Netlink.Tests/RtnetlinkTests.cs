using System.Net;
using Merlin.Testing;

namespace Merlin.Netlink.Tests;

/// <summary>rtnetlink links and neighbours: the exact bytes iproute2 sends for the same requests, and a real kernel.</summary>
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
