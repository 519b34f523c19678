using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Dataplane.Nftables.Neighbours;
using Merlin.Linux;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

public class ParsingTests
{
    [Theory]
    [InlineData("0x5eed1234", 0x5eed1234u)]
    [InlineData("DEADBEEF", 0xdeadbeefu)]
    [InlineData(" 0X1 ", 1u)]
    public void ParseSeed_ReadsHex(string text, uint seed) => Assert.Equal(seed, NftablesOptions.ParseSeed(text));

    [Theory]
    [InlineData("")]
    [InlineData("0x")]
    [InlineData("123456789")]
    [InlineData("seed")]
    public void ParseSeed_RejectsWhatIsNotHex(string text) => Assert.Throws<FormatException>(() => NftablesOptions.ParseSeed(text));

    [Fact]
    public void Options_RejectNamesThatWouldBreakTheScript()
    {
        Assert.Throws<ArgumentException>(() => new NftablesDataplane(Options("eth0\" drop"), Microsoft.Extensions.Logging.Abstractions.NullLogger<NftablesDataplane>.Instance));
        Assert.Throws<ArgumentException>(() => new NftablesDataplane(Options() with { DsrTable = "a b" }, Microsoft.Extensions.Logging.Abstractions.NullLogger<NftablesDataplane>.Instance));
    }

    [Fact]
    public void NftJson_ElementsOfEveryKind_ReadBackAsTheRendererWritesThem()
    {
        // Shapes as nft 1.0.6 prints them (captured from the kernel).
        const string maglev = """{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "netdev", "name": "d1", "table": "merlin", "type": "integer", "map": "ether_addr", "size": 3, "elem": [[0, "02:00:00:00:00:01"], [2, "02:00:00:00:00:0A"]]}}]}""";
        const string nat = """{"nftables": [{"map": {"family": "inet", "name": "n1", "elem": [[0, {"concat": ["198.18.5.2", 80]}], [1, {"concat": ["2001:0db8::2", 8080]}]]}}]}""";
        const string vmap = """{"nftables": [{"map": {"name": "svc4", "elem": [[{"concat": ["198.18.0.10", "tcp", 80]}, {"goto": {"target": "d1_4p"}}]]}}]}""";
        const string state = """{"nftables": [{"set": {"name": "state", "type": "mark", "elem": [{"elem": {"val": 16, "comment": "s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1"}}]}}]}""";
        const string live = """{"nftables": [{"set": {"name": "d1_live", "elem": ["02:00:00:00:00:01"]}}]}""";
        const string empty = """{"nftables": [{"set": {"name": "d1_live", "type": "ether_addr"}}]}""";

        Assert.Equal([("0", "0 : 02:00:00:00:00:01"), ("2", "2 : 02:00:00:00:00:0a")], NftJson.Elements(maglev));
        Assert.Equal([("0", "0 : 198.18.5.2 . 80"), ("1", "1 : 2001:db8::2 . 8080")], NftJson.Elements(nat));
        Assert.Equal([("198.18.0.10 . tcp . 80", "198.18.0.10 . tcp . 80 : goto d1_4p")], NftJson.Elements(vmap));
        Assert.Equal([("16", "16 comment \"s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1\"")], NftJson.Elements(state));
        Assert.Equal([(16u, "s 1 tcp 198.18.0.10 80 wrr 0 0 0 0 d1")], NftJson.Comments(state));
        Assert.Equal([("02:00:00:00:00:01", "02:00:00:00:00:01")], NftJson.Elements(live));
        Assert.Empty(NftJson.Elements(empty));
    }

    [Fact]
    public void NftJson_OfARenderedLayout_ComparesEqualToIt()
    {
        var layout = Build(State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80)), Service(Udp("2001:db8::20", 53), Masq("2001:db8:1::11", 53))));
        var svc6 = layout.Ruleset.Table("inet", "merlin_nat")!.Sets["svc6"];
        var json = """{"nftables": [{"map": {"name": "svc6", "elem": [[{"concat": ["2001:db8::20", "udp", 53]}, {"goto": {"target": "n1_p"}}]]}}]}""";

        var (delete, add) = SetContent.Diff(KeyedContent.Of(NftJson.Elements(json)), svc6.Content);

        Assert.Empty(delete);
        Assert.Empty(add);
    }

    [Fact]
    public void Neighbours_UsableEntriesOnly()
    {
        static NeighbourEntry Entry(string address, string? mac, ushort state) =>
            new(3, IPAddress.Parse(address), mac is null ? null : PhysicalAddress.Parse(mac), state, 0, 0);
        NeighbourEntry[] read =
        [
            Entry("198.18.0.12", "96-EA-30-CA-00-5C", Rtnetlink.StateReachable),
            Entry("198.18.0.13", "72-89-D1-4E-2F-16", Rtnetlink.StateStale),
            Entry("198.18.0.14", null, Rtnetlink.StateIncomplete),
            Entry("198.18.0.15", "72-89-D1-4E-2F-17", Rtnetlink.StateFailed),
            Entry("2001:db8::2", "76-EF-BB-E5-E2-E6", Rtnetlink.StateDelay),
            Entry("198.18.0.16", "00-00-00-00-00-00", Rtnetlink.StateNoArp),
            Entry("198.18.0.17", "00-00-00-00-00-00", Rtnetlink.StatePermanent),   // a zero MAC is no MAC
            Entry("198.18.0.18", "02-00-00-00-00-01", 0),                          // NUD_NONE: ip neigh show leaves it out
        ];

        var entries = NetlinkNeighbours.Usable(read);

        Assert.Equal(["198.18.0.12", "198.18.0.13", "2001:db8::2"], entries.Keys.Select(a => a.ToString()).Order(StringComparer.Ordinal));
        Assert.Equal("96EA30CA005C", entries[IPAddress.Parse("198.18.0.12")].ToString());
    }

    [Fact]
    public void UserData_FindsTheCommentTlv()
    {
        byte[] data = [0x00, 0x04, (byte)'a', (byte)'b', (byte)'c', 0x00, 0x07, 0x02, (byte)'x', 0x00];

        Assert.Equal("abc", NfTablesReader.UserDataString(data, 0));
        Assert.Equal("x", NfTablesReader.UserDataString(data, 7));
        Assert.Null(NfTablesReader.UserDataString(data, 3));
        Assert.Null(NfTablesReader.UserDataString([0x00, 0x09, 0x01], 0));   // truncated: no crash
    }

    [Fact]
    public void NftErrors_AreCutToTheirMessage()
    {
        var error = "/dev/stdin:3:20-30: Error: Could not process rule: No such file or directory\ndelete element netdev merlin d1 { 3 }\n                   ^^^^^^^^^^\n";

        Assert.Equal("/dev/stdin:3:20-30: Error: Could not process rule: No such file or directory | delete element netdev merlin d1 { 3 }", NftCli.Summarize(error));
    }
}
