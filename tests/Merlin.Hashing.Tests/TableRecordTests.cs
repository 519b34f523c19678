using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

public class TableRecordTests
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);
    private static readonly TimeSpan Hour = TimeSpan.FromHours(1);

    [Fact]
    public void EncodingOfASmallRecord_IsExactBytes()
    {
        // a:2 b:1 over 3 slots (a b a); b drains at t = 1000 s: slot 1 goes to a, and remembers b.
        var first = TableRecord.Of(MinimalDisruptionTable.Build([("a", 2), ("b", 1)], 3));
        var drained = TableRecord.Next(first, [("a", 2), ("b", 0)], DateTimeOffset.FromUnixTimeSeconds(1000), Hour, size: 3);
        Assert.Equal([new PreviousOwner(1, 1, 1000)], drained.Previous);
        var bytes = drained.Encode();
        // "MDT" v2 | M 3, N 2, "a" 2, "b" 0, slots a a a | 1 stamp: 1000 | 1 record: slot gap 1, server 1, stamp 0 | FNV-1a 64.
        Assert.Equal("4D445402" + "03" + "02" + "016102" + "016200" + "00" + "01" + "E807" + "01" + "01" + "01" + "00" + "BF458D17E5AF1F96",
            Convert.ToHexString(bytes));
        var back = TableRecord.Decode(bytes);
        Assert.Equal(drained.Previous, back.Previous);
        Assert.Equal(bytes, back.Encode());
        Assert.Equal("b", back.PreviousId(1));
        Assert.Null(back.PreviousId(0));
        // The load balancers read the current table of either version; its hash is the table's own.
        Assert.Equal(drained.Current.HashText, MinimalDisruptionTable.Decode(bytes).HashText);
    }

    [Fact]
    public void AVersion1Table_ReadsAsARecordWithoutPreviousOwners()
    {
        var table = MinimalDisruptionTable.Build([("a", 1), ("b", 1)]);
        var record = TableRecord.Decode(table.Encode());
        Assert.Empty(record.Previous);
        Assert.Equal(table.Encode(), record.Current.Encode());
    }

    [Fact]
    public void ADrain_KeepsThePreviousOwnerUntilTheServerIsRemoved_HoweverLongTheDrain()
    {
        var servers = new List<(string, uint)> { ("a", 1), ("b", 1), ("c", 1), ("d", 1) };
        var start = TableRecord.Of(MinimalDisruptionTable.Build(servers));
        var drained = TableRecord.Next(start, [("a", 1), ("b", 0), ("c", 1), ("d", 1)], T0, Hour);
        var moved = Enumerable.Range(0, start.Current.Size).Where(s => start.Current.OwnerId(s) == "b").ToList();
        Assert.Equal(moved, drained.Previous.Select(p => p.Slot));
        Assert.All(moved, s => Assert.Equal("b", drained.PreviousId(s)));

        // Another change three hours later (a weight change elsewhere): b still drains, so its records stay on
        // the slots that change did not move again (those record the owner they had just before).
        var later = TableRecord.Next(drained, [("a", 2), ("b", 0), ("c", 1), ("d", 1)], T0 + 3 * Hour, Hour);
        var still = moved.Where(s => later.Current.OwnerId(s) == drained.Current.OwnerId(s)).ToList();
        Assert.InRange(still.Count, moved.Count / 2, moved.Count);
        Assert.All(still, s => Assert.Equal("b", later.PreviousId(s)));
        Assert.All(moved.Except(still), s => Assert.Equal(drained.Current.OwnerId(s), later.PreviousId(s)));
        // The records of that change itself are new.
        Assert.Contains(later.Previous, p => p.Since == (T0 + 3 * Hour).ToUnixTimeSeconds());

        // b removed: nothing can hand a packet to it any more.
        var removed = TableRecord.Next(later, [("a", 2), ("c", 1), ("d", 1)], T0 + 3 * Hour + TimeSpan.FromSeconds(1), Hour);
        Assert.DoesNotContain(removed.Previous, p => removed.Current.Servers[p.Server].Id == "b");
    }

    [Fact]
    public void APreviousOwnerThatStillServes_IsForgottenOnceTheWindowHasPassed()
    {
        var start = TableRecord.Of(MinimalDisruptionTable.Build([("a", 1), ("b", 1), ("c", 1)]));
        var added = TableRecord.Next(start, [("a", 1), ("b", 1), ("c", 1), ("d", 1)], T0, Hour);
        Assert.NotEmpty(added.Previous);
        Assert.All(added.Previous, p => Assert.Equal("d", added.Current.OwnerId(p.Slot)));

        var within = TableRecord.Next(added, [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 0)], T0 + Hour - TimeSpan.FromSeconds(1), Hour);
        Assert.Equal(added.Previous.Select(p => p.Slot), within.Previous.Select(p => p.Slot));
        var after = TableRecord.Next(within, [("a", 1), ("b", 1), ("c", 1), ("d", 1)], T0 + Hour + TimeSpan.FromSeconds(1), Hour);
        Assert.Empty(after.Previous);
    }

    [Fact]
    public void ASlotThatReturnsToItsPreviousOwner_HasNoRecord()
    {
        var start = TableRecord.Of(MinimalDisruptionTable.Build([("a", 1), ("b", 1)]));
        var drained = TableRecord.Next(start, [("a", 1), ("b", 0)], T0, Hour);
        var back = TableRecord.Next(drained, [("a", 1), ("b", 1)], T0 + TimeSpan.FromSeconds(10), Hour);
        // Every slot b got back records a (it owned them meanwhile); none records b, which owns them again.
        for (int s = 0; s < back.Current.Size; s++)
            Assert.NotEqual(back.Current.OwnerId(s), back.PreviousId(s));
    }

    [Fact]
    public void AnyChangeSequence_KeepsRecordsThatTellTheLastOwnerBeforeEachMove()
    {
        // Property over seeded random histories (add, remove, drain, undrain, reweight): after each change every
        // slot that moved records its owner before the move (if that server is still in the table); no record
        // names the slot's current owner; every record round-trips to the same bytes.
        for (ulong seed = 1; seed <= 12; seed++)
        {
            var changes = new ChangeSequence(seed, [1, 2, 5], 2, 30).Start(8);
            var record = TableRecord.Of(MinimalDisruptionTable.Build(changes.Servers));
            var now = T0;
            for (int step = 0; step < 60; step++)
            {
                changes.Step();
                now += TimeSpan.FromMinutes(7);
                var next = TableRecord.Next(record, changes.Servers, now, Hour);
                var ids = next.Current.Servers.Select(s => s.Id).ToHashSet();
                if (next.Current.Size == record.Current.Size)
                {
                    for (int s = 0; s < next.Current.Size; s++)
                    {
                        var was = record.Current.OwnerId(s);
                        if (was is not null && was != next.Current.OwnerId(s) && ids.Contains(was))
                            Assert.Equal(was, next.PreviousId(s));
                    }
                }
                foreach (var p in next.Previous)
                {
                    Assert.NotEqual(next.Current.Owners[p.Slot], p.Server);
                    var draining = next.Current.Servers[p.Server].Weight == 0;
                    Assert.True(draining || p.Since >= (now - Hour).ToUnixTimeSeconds(), $"seed {seed} step {step}: slot {p.Slot} kept past the window");
                }
                var bytes = next.Encode();
                Assert.Equal(bytes, TableRecord.Decode(bytes).Encode());
                record = next;
            }
        }
    }

    [Fact]
    public void ADrainThenAnAddition_WithinTheWindow_MovesNoSlotTwice()
    {
        // The fleet lab's scenario: a drain, then an addition before the window ends. The addition takes its share
        // from the servers that just received the drained one's slots; taking those slots again would leave their
        // connections (still on the drained server) with a previous owner that does not have them.
        var eight = Enumerable.Range(0, 8).Select(i => ($"s{i}", 1u)).ToList(); // 9 with the addition: M stays 1,021
        var start = TableRecord.Of(MinimalDisruptionTable.Build(eight));
        var drained = TableRecord.Next(start, [.. eight.Select(x => x.Item1 == "s3" ? (x.Item1, 0u) : x)], T0, Hour);
        var added = TableRecord.Next(drained, [.. drained.Current.Servers.Select(x => (x.Id, x.Weight)), ("s8", 1u)], T0 + TimeSpan.FromSeconds(10), Hour);

        int m = start.Current.Size;
        var movedTwice = Enumerable.Range(0, m).Count(s =>
            start.Current.OwnerId(s) != drained.Current.OwnerId(s) && drained.Current.OwnerId(s) != added.Current.OwnerId(s));
        Assert.Equal(0, movedTwice);
        // Every slot the drain moved still names s3, the server with its connections.
        Assert.All(Enumerable.Range(0, m).Where(s => start.Current.OwnerId(s) == "s3"), s => Assert.Equal("s3", added.PreviousId(s)));

        // Without the preference the same addition moves some of them twice (what this test guards against).
        var plain = MinimalDisruptionTable.Next(drained.Current, [.. drained.Current.Servers.Select(x => (x.Id, x.Weight)), ("s8", 1u)]);
        Assert.Contains(Enumerable.Range(0, m), s => start.Current.OwnerId(s) != drained.Current.OwnerId(s) && drained.Current.OwnerId(s) != plain.OwnerId(s));
        // It changes which slots move, never how many or the balance.
        Assert.Equal(plain.SlotCounts(), added.Current.SlotCounts());
        Assert.Equal(MinimalDisruptionTable.SlotsMoved(drained.Current, plain), MinimalDisruptionTable.SlotsMoved(drained.Current, added.Current));
    }

    /// <summary>The slot the kernel gives hash <paramref name="h"/> in a table of <paramref name="m"/> slots: <c>jhash … mod M</c> is reciprocal_scale, (h·M) >> 32.</summary>
    private static int KernelSlot(uint h, int m) => (int)Jhash.ReciprocalScale(h, (uint)m);

    private static uint[] RandomHashes(ulong seed, int count)
    {
        var rng = new SyntheticFlows.SplitMix64(seed);
        var hashes = new uint[count];
        for (int i = 0; i < count; i++) hashes[i] = (uint)rng.Next();
        return hashes;
    }

    /// <summary>
    /// The flows (as hashes) whose server changed from <paramref name="before"/> to <paramref name="after"/> without
    /// <paramref name="after"/> naming their old server as their slot's previous owner — flows second chance cannot
    /// save. A server that left the table is not counted: nothing could hand a packet to it.
    /// </summary>
    private static List<string> Unrecorded(MinimalDisruptionTable before, TableRecord after, uint[] hashes)
    {
        var ids = after.Current.Servers.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
        var unrecorded = new List<string>();
        foreach (var h in hashes)
        {
            int from = KernelSlot(h, before.Size), to = KernelSlot(h, after.Current.Size);
            string? was = before.OwnerId(from), owner = after.Current.OwnerId(to);
            if (was is null || was == owner || !ids.Contains(was) || after.PreviousId(to) == was) continue;
            unrecorded.Add($"hash {h:x8}: slot {from}/{before.Size} on {was}, now slot {to}/{after.Current.Size} on {owner}, previous {after.PreviousId(to) ?? "none"}");
        }
        return unrecorded;
    }

    [Theory]
    [InlineData(1UL, new uint[] { 1 })]
    [InlineData(2UL, new uint[] { 1, 2, 5 })]
    [InlineData(3UL, new uint[] { 7, 100, 1000 })]
    public void AnyChangeSequenceThatGrowsTheTable_LeavesEveryFlowOnItsServerOrRecordsIt(ulong seed, uint[] weights)
    {
        // Property over random histories from 2 servers up to 60, so M grows several times: after every change, every
        // flow (a random 32-bit hash placed as the kernel places it) is on the server it was on, or its new slot names
        // that server as previous owner. Growth must hide no move from second chance.
        var hashes = RandomHashes(seed, 20_000);
        var changes = new ChangeSequence(seed, weights, 2, 60).Start(2);
        var record = TableRecord.Of(MinimalDisruptionTable.Build(changes.Servers));
        var now = T0;
        int growths = 0;
        for (int step = 0; step < 300; step++)
        {
            changes.Step();
            now += TimeSpan.FromMinutes(1);
            var next = TableRecord.Next(record, changes.Servers, now, Hour);
            if (next.Current.Size != record.Current.Size)
            {
                growths++;
                // Growing moves no more than the change needs, as at a kept size (the ≤ 1.05 × ideal goal).
                double ideal = next.Current.Size * ChangeSimulation.ChangedShare([.. record.Current.Servers.Select(x => (x.Id, x.Weight))], changes.Servers);
                int moved = MinimalDisruptionTable.SlotsMoved(record.Current, next.Current);
                Assert.True(moved <= Math.Max(1.05 * ideal, Math.Ceiling(ideal)), $"seed {seed} step {step} {changes.Kind} (M {record.Current.Size} → {next.Current.Size}): {moved} slots moved, ideal {ideal:F2}");
            }
            var unrecorded = Unrecorded(record.Current, next, hashes);
            Assert.True(unrecorded.Count == 0, $"seed {seed} step {step} {changes.Kind} {changes.ChangedId} (M {record.Current.Size} → {next.Current.Size}): {unrecorded.Count} flow(s) moved unrecorded, e.g. {string.Join("; ", unrecorded.Take(3))}");
            record = next;
        }
        Assert.True(growths >= 2, $"seed {seed}: M grew {growths} time(s); the property needs growth to test");
    }

    [Fact]
    public void TheFleetLabsThirdScenario_ADrainAndAnAdditionThatGrowsTheTable_LeaveEveryFlowRecoverable()
    {
        // Five servers (M = 509); the busiest drains, and a sixth joins ten seconds later, which needs M ≥ 600. Every
        // flow of the first table is still on its server after both, or the slot it lands in names that server.
        var five = Enumerable.Range(1, 5).Select(i => ($"198.18.1.{i}:80", 1u)).ToList();
        var start = TableRecord.Of(MinimalDisruptionTable.Build(five));
        Assert.Equal(509, start.Current.Size);
        var drained = TableRecord.Next(start, [.. five.Select(x => x.Item1 == "198.18.1.3:80" ? (x.Item1, 0u) : x)], T0, Hour);
        var added = TableRecord.Next(drained, [.. drained.Current.Servers.Select(x => (x.Id, x.Weight)), ("198.18.1.6:80", 1u)], T0 + TimeSpan.FromSeconds(10), Hour);
        Assert.Equal(1018, added.Current.Size);
        Assert.Equal(added.Encode(), TableRecord.Decode(added.Encode()).Encode());

        var hashes = RandomHashes(17, 50_000);
        Assert.Empty(Unrecorded(start.Current, drained, hashes));
        Assert.Empty(Unrecorded(drained.Current, added, hashes));
        // Across both changes: a flow that began before the drain is on its server or names it (nothing moved twice).
        var unrecorded = Unrecorded(start.Current, added, hashes);
        Assert.True(unrecorded.Count == 0, $"{unrecorded.Count} flow(s), e.g. {string.Join("; ", unrecorded.Take(3))}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheFleetLabsWholeHistory_ADrainAndAnAdditionAfterEarlierMoves_LeaveEveryFlowRecoverable(bool addFirst)
    {
        // The lab's three scenarios within one window: rs2 drains and comes back, rs5 joins, then rs1 drains while rs6
        // joins (in either order). By then most slots have moved within the window, so the addition cannot take only
        // unmoved slots; it must not take the ones the drain just gave away, whose connections are still on rs1.
        static string Rs(int i) => $"198.18.1.{i}:80";
        static List<(string, uint)> Set(TableRecord r, string id, uint weight) =>
            [.. r.Current.Servers.Where(s => s.Id != id).Select(s => (s.Id, s.Weight)), (id, weight)];
        var record = TableRecord.Of(MinimalDisruptionTable.Build([.. Enumerable.Range(1, 4).Select(i => (Rs(i), 1u))]));
        var now = T0;
        record = TableRecord.Next(record, Set(record, Rs(2), 0), now += TimeSpan.FromSeconds(30), Hour);
        record = TableRecord.Next(record, Set(record, Rs(2), 1), now += TimeSpan.FromSeconds(30), Hour);
        record = TableRecord.Next(record, Set(record, Rs(5), 1), now += TimeSpan.FromSeconds(30), Hour);
        var before = record;
        foreach (var (id, weight) in addFirst ? new[] { (Rs(6), 1u), (Rs(1), 0u) } : [(Rs(1), 0u), (Rs(6), 1u)])
            record = TableRecord.Next(record, Set(record, id, weight), now += TimeSpan.FromSeconds(1), Hour);

        var unrecorded = Unrecorded(before.Current, record, RandomHashes(5, 50_000));
        Assert.True(unrecorded.Count == 0, $"{unrecorded.Count} flow(s), e.g. {string.Join("; ", unrecorded.Take(3))}");
    }

    [Fact]
    public void AnyChangeSequence_PreferringUnmovedSlots_MovesAsManySlotsAndKeepsTheSameCounts()
    {
        for (ulong seed = 1; seed <= 12; seed++)
        {
            var changes = new ChangeSequence(seed, [1, 2, 5], 2, 30).Start(8);
            var record = TableRecord.Of(MinimalDisruptionTable.Build(changes.Servers));
            var now = T0;
            for (int step = 0; step < 60; step++)
            {
                changes.Step();
                now += TimeSpan.FromMinutes(7);
                var next = TableRecord.Next(record, changes.Servers, now, Hour);
                var plain = MinimalDisruptionTable.Next(record.Current, changes.Servers);
                Assert.Equal(plain.Size, next.Current.Size);
                Assert.Equal(plain.SlotCounts(), next.Current.SlotCounts());
                if (plain.Size == record.Current.Size)
                    Assert.Equal(MinimalDisruptionTable.SlotsMoved(record.Current, plain), MinimalDisruptionTable.SlotsMoved(record.Current, next.Current));
                record = next;
            }
        }
    }

    [Fact]
    public void AThousandServers_WithEverySlotRecorded_StayWellUnderEtcdsLimit()
    {
        // The worst case: every slot moved within the window, a thousand different moments.
        var servers = SimulationServer.Synthetic(1000).Select(s => (s.Id, s.Weight)).ToList();
        var table = MinimalDisruptionTable.Build(servers);
        var previous = new PreviousOwner[table.Size];
        for (int s = 0; s < table.Size; s++)
            previous[s] = new PreviousOwner(s, (table.Owners[s] + 1) % 1000, 1_800_000_000 + s % 1000);
        var bytes = new TableRecord(table, previous).Encode();
        Assert.True(bytes.Length < 1_572_864 * 2 / 3, $"{bytes.Length} bytes");
        Assert.Equal(previous, TableRecord.Decode(bytes).Previous);
    }

    [Fact]
    public void DamagedRecords_AreRefusedWithTheReason()
    {
        var start = TableRecord.Of(MinimalDisruptionTable.Build([("a", 1), ("b", 1), ("c", 1)]));
        var good = TableRecord.Next(start, [("a", 1), ("b", 0), ("c", 1)], T0, Hour).Encode();

        var flipped = (byte[])good.Clone();
        flipped[^12] ^= 0x01;
        Assert.Contains("hash mismatch", Assert.Throws<TableFormatException>(() => TableRecord.Decode(flipped)).Message);
        Assert.Throws<TableFormatException>(() => TableRecord.Decode(good[..^9]));

        // Well-formed but lying: a record that names the slot's current owner as its previous one.
        var record = TableRecord.Decode(good);
        var first = record.Previous[0];
        var lying = new TableRecord(record.Current, [first with { Server = record.Current.Owners[first.Slot] }]).Encode();
        Assert.Contains("is its current owner", Assert.Throws<TableFormatException>(() => TableRecord.Decode(lying)).Message);
    }
}
