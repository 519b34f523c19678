using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Hashing;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>md-table services against the real kernel: the map holds the table the API stored, slot for slot.</summary>
public class StoredTableKernelTests
{
    private static readonly (RealServerKey, RealServerConfig)[] Servers =
        [Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80, 2)];

    private static ServiceState MdService(byte[] table) =>
        Service(Tcp("198.18.0.10", 80), Config("mh", SchedulerFlags.Flag2 | SchedulerFlags.Flag3) with { Table = new StoredTable(table) }, Servers);

    /// <summary>The elements a map of <paramref name="table"/> holds: each slot to its owner's MAC.</summary>
    private static HashSet<string> Expected(MinimalDisruptionTable table) =>
        Enumerable.Range(0, table.Size)
            .Select(s => SlotContent.ElementText(s, StateRecords.MacText(MacOf(IPAddress.Parse(table.OwnerId(s)!.Split(':')[0])))))
            .ToHashSet(StringComparer.Ordinal);

    private static HashSet<string> KernelMap(TestNamespace ns, string map = "d1") =>
        Kernel.NftJson.Elements(ns.Nft("-j", "list", "map", "netdev", "merlin", map)).Select(e => e.Element).ToHashSet(StringComparer.Ordinal);

    /// <summary>Whether one of the first maps (two services: two maps, numbered as the layout chose) holds exactly <paramref name="table"/>.</summary>
    private static bool SomeMapHolds(TestNamespace ns, MinimalDisruptionTable table) =>
        new[] { "d1", "d2", "d3" }.Any(m => { try { return KernelMap(ns, m).SetEquals(Expected(table)); } catch (InvalidOperationException) { return false; } });

    [Fact]
    public async Task StoredTable_IsProgrammedSlotForSlot_AndADamagedOneIsReportedAndReplacedByTheFreshTable()
    {
        using var ns = TestNamespace.WithInterface();
        // A table with a history (four servers, then one removed), which no build from the three alone gives.
        var four = MinimalDisruptionTable.Build([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2), ("198.18.1.14:80", 1)]);
        var table = four.Next([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2)]);
        var fresh = MinimalDisruptionTable.Build([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2)]);
        Assert.NotEqual(fresh.HashText, table.HashText);
        var desired = State(MdService(table.Encode()));
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));

        await dataplane.ReconcileAsync(desired);

        Assert.Empty(dataplane.Issues);
        Assert.Equal(table.Size, KernelMap(ns).Count);
        Assert.True(KernelMap(ns).SetEquals(Expected(table)), "the kernel's map is not the stored table");
        Assert.Equal(0, await dataplane.ReconcileAsync(desired));   // and it stays

        // The same table with one byte changed: reported, and the table every node computes from nothing is programmed instead.
        var damaged = table.Encode();
        damaged[damaged.Length / 2] ^= 0x40;
        var broken = State(MdService(damaged));
        await dataplane.ReconcileAsync(broken);

        var issue = Assert.Single(dataplane.Issues);
        Assert.Contains("stored md-table damaged (hash mismatch", issue.ToString());
        Assert.Contains($"programmed {fresh.HashText}", issue.ToString());
        Assert.True(KernelMap(ns).SetEquals(Expected(fresh)), "a damaged table must be replaced whole by the fresh one");
        var programmed = Assert.Single(dataplane.Tables);
        Assert.Equal((fresh.HashText, 1L), (programmed.Hash, programmed.Changes));
        Assert.StartsWith("damaged (hash mismatch", programmed.Problem);
    }

    [Fact]
    public async Task TableMadeForOtherServers_IsReplacedByWhatFollowsIt_ReportedEveryPass_AndEachChangeCountsTheSlotsItMoved()
    {
        using var ns = TestNamespace.WithInterface();
        // Stored for .11, .12, .13 and .14; the service has .11, .12, .13 and .15 (written past the API, as a Go merlin does).
        var stored = MinimalDisruptionTable.Build([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2), ("198.18.1.14:80", 1)]);
        var md = Config("mh", SchedulerFlags.Flag2 | SchedulerFlags.Flag3) with { Table = new StoredTable(stored.Encode()) };
        var service = Service(Tcp("198.18.0.10", 80), md, Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80, 2), Route("198.18.1.15", 80));
        var other = Service(Tcp("198.18.0.11", 80), Route("198.18.1.11", 80));
        var desired = State(service, other);
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));

        await dataplane.ReconcileAsync(desired);

        // What the API stores on the next write: the table that follows the stored one (the stored weights kept).
        var expected = stored.Next([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2), ("198.18.1.15:80", 1)]);
        Assert.True(SomeMapHolds(ns, expected), "the node must program the table that follows the stored one");
        string issue = Assert.Single(dataplane.Issues).ToString();
        Assert.Contains("stored md-table made for other servers (servers not in it: 198.18.1.15:80; in it but not servers: 198.18.1.14:80)", issue);
        Assert.Equal((expected.HashText, 0L), (dataplane.Tables.Single().Hash, dataplane.Tables.Single().Changes));

        // Another service changes: this one's plan is reused, and its table's problem is still reported.
        var otherChanged = Service(Tcp("198.18.0.11", 80), Route("198.18.1.12", 80));
        await dataplane.ReconcileAsync(State(service, otherChanged));
        Assert.Equal(issue, Assert.Single(dataplane.Issues).ToString());

        // The API's next write stores a table for the servers: no issue, and the change counts the slots it moved.
        var now = expected.Next([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2)]);
        var repaired = Service(Tcp("198.18.0.10", 80), md with { Table = new StoredTable(now.Encode()) }, Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80, 2));
        await dataplane.ReconcileAsync(State(repaired, otherChanged));
        Assert.Empty(dataplane.Issues);
        Assert.True(SomeMapHolds(ns, now));
        var table = Assert.Single(dataplane.Tables);
        Assert.Equal((now.HashText, (string?)null, 1L), (table.Hash, table.Problem, table.Changes));
        Assert.Equal(expected.SlotCounts()[expected.Servers.ToList().FindIndex(s => s.Id == "198.18.1.15:80")], table.SlotsMoved);
    }

    [Fact]
    public void ServerThisNodeCannotUse_HandsItsSlotsToTheNextUsableOwner()
    {
        var table = MinimalDisruptionTable.Build([("198.18.1.11:80", 1), ("198.18.1.12:80", 1), ("198.18.1.13:80", 2)]);
        // .12 failed its health check here: weight 0 on this node only (the stored table still has it).
        var service = Service(Tcp("198.18.0.10", 80), Config("mh", SchedulerFlags.Flag2 | SchedulerFlags.Flag3) with { Table = new StoredTable(table.Encode()) },
            Route("198.18.1.11", 80), Route("198.18.1.12", 80, 0), Route("198.18.1.13", 80, 2));
        var layout = Build(State(service));
        var elements = layout.Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements().Select(e => e.Element).ToList();
        Assert.Equal(table.Size, elements.Count);
        var down = StateRecords.MacText(MacOf(IPAddress.Parse("198.18.1.12")));
        Assert.DoesNotContain(elements, e => e.EndsWith(down, StringComparison.Ordinal));
        // Every other slot keeps its stored owner.
        var expected = Expected(table);
        Assert.Equal(table.SlotCounts()[0] + table.SlotCounts()[2], elements.Count(expected.Contains));
    }
}
