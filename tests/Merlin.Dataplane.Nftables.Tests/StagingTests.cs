using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;
using Merlin.Linux;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The DSR Maglev maps made over our own netlink codec ahead of nft's transaction: exact bytes, and what the script leaves to them.</summary>
public class StagingTests
{
    private static Dictionary<ServiceKey, ServiceState> Mixed() => State(
        Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)),
        Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80), Route("198.18.1.14", 80, 2)),
        Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 3)));

    [Fact]
    public void TheMapsUserData_IsWhatNft106Stores()
    {
        // Read back over netlink from `add map netdev merlin d1 { typeof numgen inc mod 1021 : ether daddr; size 1021; }`
        // made by nft 1.0.6 (Debian 12) on kernel 6.18.
        const string nft = "00040100000001040200000003" + "1a" + "0004170000000112" + "000400000000" + "0104fd030000" + "020400000000"
            + "0414" + "0004070000000" + "10c" + "000411000000" + "010401000000" + "060400000000";
        Assert.Equal(nft, Convert.ToHexStringLower(SetStaging.MapUserData(1021)));
    }

    [Fact]
    public void ABatch_IsTheNetlinkMessagesNftWouldSend_ByteForByte()
    {
        var values = new string?[7];
        values[0] = "02:00:00:00:00:01";
        values[5] = "02:00:00:00:00:0A";
        var set = new NftSet("d1", "map", TableRenderer.DsrDeclaration(7), new SlotContent(values));
        var writer = new BatchWriter(1 << 20);
        writer.Message(0, NetlinkFlags.Create, 5, w => w.Writer.WriteString(1, "merlin"), _ => { });
        writer.Message(9, NetlinkFlags.Create | NetlinkFlags.Exclusive, 5, w => SetStaging.WriteMapDeclaration(w.Writer, "merlin", "d1", 7, 1), _ => { });
        SetStaging.WriteSlots(writer, 5, "merlin", "d1", (SlotContent)set.Content, _ => { });
        var batch = writer.Finish()!.Value;

        // Sequence numbers and port ids stay zero: the client stamps them as it sends (NetlinkClient.ExecuteTransaction).
        string Header(int length, string type, string flags, string family, string resId) =>
            $"{length:x2}000000{type}{flags}0000000000000000{family}00{resId}";
        var expected = string.Concat(
            // NFNL_MSG_BATCH_BEGIN, AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES (big endian)
            Header(20, "1000", "0100", "00", "000a"),
            // NFT_MSG_NEWTABLE (subsystem 10 << 8), REQUEST|CREATE, netdev; NFTA_TABLE_NAME "merlin"
            Header(32, "000a", "0104", "05", "0000"), "0b000100", "6d65726c696e0000",
            // NFT_MSG_NEWSET, REQUEST|CREATE|EXCL: table, name, flags MAP, key integer/4, data ether_addr/6, id 1, desc size 7, user data
            Header(172, "090a", "0106", "05", "0000"), "0b000100", "6d65726c696e0000", "07000200", "64310000",
            "0800030000000008", "0800040000000004", "0800050000000004", "0800060000000009", "0800070000000006", "08000a0000000001",
            "0c000980", "0800010000000007",
            "48000d00", Convert.ToHexStringLower(SetStaging.MapUserData(7)),
            // NFT_MSG_NEWSETELEM, REQUEST|CREATE|EXCL|ACK (the batch's last message): table, set, elements
            Header(108, "0c0a", "0506", "05", "0000"), "0b000100", "6d65726c696e0000", "07000200", "64310000",
            "44000380",
            // slot 0 → 02:00:00:00:00:01: LIST_ELEM { KEY { VALUE u32 host order }, DATA { VALUE 6 bytes } }
            "20000180", "0c000180", "0800010000000000", "10000280", "0a000100", "020000000001", "0000",
            "20000180", "0c000180", "0800010005000000", "10000280", "0a000100", "02000000000a", "0000",
            // NFNL_MSG_BATCH_END
            Header(20, "1100", "0100", "00", "000a"));
        Assert.Equal(expected, Convert.ToHexStringLower(batch.Bytes.Span));
        Assert.Equal(68, SetStaging.MapUserData(7).Length);
    }

    [Fact]
    public void ALongMap_IsSplitIntoMessagesAndBatches()
    {
        var values = Enumerable.Range(0, 4093).Select(i => i % 3 == 0 ? null : "02:00:00:00:00:01").ToArray();
        var batches = new List<byte[]>();
        var writer = new BatchWriter(100_000);
        void Full(BatchWriter w) => batches.Add(w.Finish()!.Value.Bytes.ToArray());
        SetStaging.WriteSlots(writer, 5, "merlin", "d1", new SlotContent(values), Full);
        Full(writer);

        int elements = 0, messages = 0;
        foreach (var batch in batches)
        {
            Assert.True(batch.Length <= 100_000);
            for (int at = 0; at < batch.Length;)
            {
                int length = BitConverter.ToInt32(batch, at);
                ushort type = BitConverter.ToUInt16(batch, at + 4);
                if (type == 0x0a0c)
                {
                    messages++;
                    int count = (length - 20 - 12 - 8 - 4) / 32;
                    Assert.InRange(count, 1, SetStaging.ElementsPerMessage);
                    elements += count;
                }
                at += (length + 3) & ~3;
            }
        }
        Assert.Equal(values.Count(v => v is not null), elements);
        Assert.Equal(3, messages);          // 2,728 elements, 1,024 a message
        Assert.Equal(2, batches.Count);     // 100 kB a batch
    }

    [Theory]
    [InlineData("02:00:00:00:00")]
    [InlineData("02-00-00-00-00-01")]
    [InlineData("02:00:00:00:00:0g")]
    public void ATextThatIsNoMac_IsRefused(string text) =>
        Assert.Throws<FormatException>(() => SetStaging.ParseMac(text, new byte[6]));

    [Fact]
    public void AFirstPass_StagesTheDsrMaps_AndWrittenWithThemIsTheWholeScript()
    {
        var ruleset = Build(Mixed()).Ruleset;

        var staged = ScriptRenderer.DiffScript(NftRuleset.Empty, ruleset, stage: true);

        Assert.Equal(["d1", "d2"], staged.Staged.Select(s => s.Set.Name).Order(StringComparer.Ordinal));
        Assert.All(staged.Staged, s => Assert.Equal(("netdev", "merlin"), (s.Family, s.Table)));
        var text = staged.ToString();
        Assert.DoesNotContain("merlin d1 ", text);
        Assert.DoesNotContain("merlin d2 ", text);
        Assert.Contains("add map inet merlin_nat n1 ", text);   // NAT maps stay in nft's script
        Assert.Contains("add map netdev merlin svc4 ", text);
        Assert.Contains("map @d1", text);                       // the rules that put them in use
        Assert.Equal(ScriptRenderer.Full(ruleset), staged.ToString(withStaged: true));
        Assert.True(staged.HasNftCommands);
    }

    [Fact]
    public void OnlyMapsNewToTheKernel_AreStaged()
    {
        var before = Build(Mixed());
        var more = Mixed();
        more[Tcp("198.18.0.12", 80)] = Service(Tcp("198.18.0.12", 80), Route("198.18.1.15", 80));
        var after = Build(more, before.Assignment);

        var diff = ScriptRenderer.DiffScript(before.Ruleset, after.Ruleset, stage: true);

        var name = Assert.Single(diff.Staged).Set.Name;
        Assert.DoesNotContain(name, before.Ruleset.Table("netdev", "merlin")!.Sets.Keys);
        Assert.Equal(ScriptRenderer.Diff(before.Ruleset, after.Ruleset), diff.ToString(withStaged: true));
        // A rewrite stages only what the kernel does not hold.
        var kernel = new KernelTable("netdev", "merlin", 1, 0, [], [new KernelSet("d1", 1, 8, 4, 6, 1021, 0, null)]);
        var rewrite = ScriptRenderer.RewriteScript([kernel], before.Ruleset, stage: true);
        Assert.Equal(["d2"], rewrite.Staged.Select(s => s.Set.Name));
        Assert.Contains("add map netdev merlin d1 ", rewrite.ToString());
    }

    // ---- against the kernel ----

    private static NftSet Map(string name, int size, int servers, int seed = 0)
    {
        var values = new string?[size];
        for (int i = 0; i < size; i++)
            if ((i + seed) % 17 != 0) values[i] = $"02:00:00:00:{(i + seed) % servers:x2}:{seed % 256:x2}";
        return new NftSet(name, "map", TableRenderer.DsrDeclaration(size), new SlotContent(values));
    }

    private static string NftScriptFor(params NftSet[] sets) =>
        ScriptRenderer.Full(new NftRuleset([new NftTable("netdev", "merlin", sets.ToDictionary(s => s.Name), new Dictionary<string, NftChain>())]));

    /// <summary>Every attribute the kernel reports for a set, but its name and handle.</summary>
    private static List<string> SetAttributes(NetlinkClient socket, string name) =>
        Attributes(Assert.Single(NfNetlink.Request(socket, 10, 5, dump: false, "merlin", 2, name)))
            .Where(a => a.Type is not (2 or 16))
            .Select(a => $"{a.Type}={Convert.ToHexStringLower(a.Value)}")
            .ToList();

    private static List<(ushort Type, byte[] Value)> Attributes(byte[] bytes)
    {
        var result = new List<(ushort, byte[])>();
        foreach (var a in new AttributeReader(bytes)) result.Add((a.Type, a.Payload.ToArray()));
        return result;
    }

    /// <summary>The set's elements as the kernel dumps them (each NFTA_LIST_ELEM, as bytes), sorted: a hash set's order depends on its random seed.</summary>
    private static List<string> ElementBytes(NetlinkClient socket, string name) =>
        NfNetlink.Request(socket, 13, 5, dump: true, "merlin", 2, name)
            .SelectMany(r => Attributes(r).Where(a => a.Type == 3))
            .SelectMany(list => Attributes(list.Value))
            .Select(e => Convert.ToHexStringLower(e.Value))
            .Order(StringComparer.Ordinal)
            .ToList();

    [Fact]
    public void AStagedMap_IsTheMapNftMakes()
    {
        using var ns = TestNamespace.WithInterface();
        var byNft = Map("da", 1021, 10);
        var ours = byNft with { Name = "db" };
        ns.NftScript(NftScriptFor(byNft));
        using var socket = NfNetlink.Open(ns.Name);

        Assert.Equal(1, SetStaging.Stage(socket, [new StagedSet("netdev", "merlin", ours)]).Commits);

        Assert.Equal(SetAttributes(socket, "da"), SetAttributes(socket, "db"));   // declaration, size, user data: all the same
        var elements = ElementBytes(socket, "db");
        Assert.Equal(ours.Content.Count, elements.Count);
        Assert.Equal(ElementBytes(socket, "da"), elements);
        Assert.Equal(ns.Nft("list", "map", "netdev", "merlin", "da").Replace("map da", "map db"), ns.Nft("list", "map", "netdev", "merlin", "db"));
        // nft reads it back element for element as the map it would have made.
        Assert.Equal(ours.Content.Elements().Select(e => e.Element), Kernel.NftJson.Elements(ns.Nft("-j", "list", "map", "netdev", "merlin", "db")).Select(e => e.Element));
    }

    [Fact]
    public void MapsSplitOverSeveralTransactions_AreWhole_AndCountTheirCommits()
    {
        using var ns = TestNamespace.WithInterface();
        var maps = Enumerable.Range(1, 4).Select(i => Map($"d{i}", 1021, 7, i)).ToList();
        uint before = ns.Generation();
        using var socket = NfNetlink.Open(ns.Name);

        var staging = SetStaging.Stage(socket, maps.Select(m => new StagedSet("netdev", "merlin", m)).ToList(), maxBatchBytes: 140_000);

        // A batch takes another message while 64 KiB more still fit: three maps of ~31 kB (a NEWSET
        // and one NEWSETELEM each), then the fourth; the table (new) goes with the first.
        Assert.Equal(2, staging.Commits);
        Assert.Equal([("netdev", "merlin")], staging.TablesMade);
        Assert.Equal(before + 2, ns.Generation());
        foreach (var map in maps)
            Assert.Equal(map.Content.Elements().Select(e => e.Element), Kernel.NftJson.Elements(ns.Nft("-j", "list", "map", "netdev", "merlin", map.Name)).Select(e => e.Element));
    }

    [Fact]
    public void ABatchTheKernelRefuses_LeavesNothingBehind()
    {
        using var ns = TestNamespace.WithInterface();
        ns.NftScript(NftScriptFor(Map("d2", 251, 3)));
        uint before = ns.Generation();
        using var socket = NfNetlink.Open(ns.Name);

        var refused = Assert.Throws<NetlinkException>(() => SetStaging.Stage(socket, [new("netdev", "merlin", Map("d1", 251, 3)), new("netdev", "merlin", Map("d2", 251, 3))]).Commits);

        Assert.Equal(17, refused.Errno);                     // EEXIST: d2 is there already
        Assert.Contains("File exists", refused.Message);     // what the dataplane takes for "our picture was stale"
        Assert.Equal(before, ns.Generation());               // one transaction, aborted whole
        Assert.Null(ns.Tables(("netdev", "merlin")).Single().Set("d1"));
    }

    [Fact]
    public void ALaterBatchRefused_TakesBackTheEarlierOnes_AndTheSocketServesTheNextBatch()
    {
        using var ns = TestNamespace.WithInterface();
        ns.NftScript(NftScriptFor(Map("d4", 1021, 3)));
        using var socket = NfNetlink.Open(ns.Name);
        var maps = Enumerable.Range(1, 4).Select(i => new StagedSet("netdev", "merlin", Map($"d{i}", 1021, 7, i))).ToList();

        // d1–d3 commit in the first batch; the second is refused (d4 exists), so the first is taken back.
        var refused = Assert.Throws<NetlinkException>(() => SetStaging.Stage(socket, maps, maxBatchBytes: 140_000));

        Assert.Equal(17, refused.Errno);
        Assert.Equal(["d4"], ns.Tables(("netdev", "merlin")).Single().Sets.Select(s => s.Name));
        // Nothing of those batches is left on the socket to be read as the next batch's answer.
        var next = SetStaging.Stage(socket, [new("netdev", "merlin", Map("d5", 251, 3))]);
        Assert.Equal((1, 0), (next.Commits, next.TablesMade.Count));
        Assert.Equal(["d4", "d5"], ns.Tables(("netdev", "merlin")).Single().Sets.Select(s => s.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void StagedMaps_CanBeDeletedAgain_AndATableStagingMadeGoesWithThem()
    {
        using var ns = TestNamespace.WithInterface();
        ns.NftScript("add table inet merlin_nat\n");
        var staged = new List<StagedSet>
        {
            new("netdev", "merlin", Map("d1", 251, 3)), new("netdev", "merlin", Map("d2", 509, 5)),
            new("inet", "merlin_nat", Map("d3", 251, 3)),
        };
        using var socket = NfNetlink.Open(ns.Name);
        var staging = SetStaging.Stage(socket, staged);
        Assert.Equal([("netdev", "merlin")], staging.TablesMade);

        SetStaging.Unstage(socket, staging, staged);

        Assert.Empty(ns.Tables(("netdev", "merlin")));                              // made by staging: gone
        Assert.Empty(Assert.Single(ns.Tables(("inet", "merlin_nat"))).Sets);        // was there: kept, its staged set gone
    }
}
