using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

public class KernelMhTests
{
    private static IpvsDest D(string endpoint, int weight) => IpvsDest.Create(endpoint, weight);

    [Fact]
    public void TableSizes_FollowConfigIpVsMhTabIndex()
    {
        Assert.Equal(4093, KernelMh.TableSizeFor(KernelMh.DefaultTabIndex));   // Kconfig default 12
        Assert.Equal(251, KernelMh.TableSizeFor(8));
        Assert.Equal(65521, KernelMh.TableSizeFor(16));
        Assert.Equal(131071, KernelMh.TableSizeFor(17));
        Assert.Throws<ArgumentOutOfRangeException>(() => KernelMh.TableSizeFor(18));
    }

    [Fact]
    public void Populate_SmallTable_MatchesHandWorkedFill()
    {
        // M = 7, list A B C with offsets 3 0 3 and skips 2 1 4, one turn each:
        // round 1: A→3, B→0, C: 3 taken, 0 taken, 4
        // round 2: A: 3 taken → 5, B: 0 taken → 1, C: 4 taken, 1 taken, 5 taken, 2
        // round 3: A: 5 taken, 0, 2, 4 taken → 6. Full.
        var table = new int[7];
        KernelMh.Populate([3, 0, 3], [2, 1, 4], [1, 1, 1], table);
        Assert.Equal(new[] { 1, 1, 2, 0, 2, 0, 0 }, table);

        // A with two turns takes two slots in a row each round: A 3, A 5, B 0, C 4, A 2, A 6, B 1.
        KernelMh.Populate([3, 0, 3], [2, 1, 4], [2, 1, 1], table);
        Assert.Equal(new[] { 1, 1, 0, 0, 2, 0, 0 }, table);

        // No turns at all: the kernel resets the table.
        KernelMh.Populate([3, 0], [2, 1], [0, 0], table);
        Assert.All(table, t => Assert.Equal(-1, t));
    }

    [Fact]
    public void Turns_AreGcdReducedAndShiftedToTheTableBits()
    {
        Assert.Equal(new[] { 2, 1, 0 }, KernelMh.Turns([100, 50, 0], 6));
        // max/gcd = 1000 needs 10 bits; 6 are allowed, so shift by 4: 1000 >> 4 = 62, and 1 >> 4 = 0 → 1.
        Assert.Equal(new[] { 62, 1 }, KernelMh.Turns([1000, 1], 6));
        Assert.Equal(new[] { 0, 0 }, KernelMh.Turns([0, 0], 6));
    }

    [Fact]
    public void Permutation_MatchesReferenceModel()
    {
        // From Reference/kernel_reference.py: offset = hsiphash mod 251, skip = hsiphash' mod 250 + 1.
        Assert.Equal((248, 249), KernelMh.Permutation(D("198.18.0.21:80", 1).FoldedAddress, 80, 251));
        Assert.Equal((91, 38), KernelMh.Permutation(D("198.18.0.22:80", 1).FoldedAddress, 80, 251));
        Assert.Equal((38, 77), KernelMh.Permutation(D("198.18.0.23:80", 1).FoldedAddress, 80, 251));
    }

    // The 251-slot table for .21, .22, .23 (added in that order, weight 1), one digit per slot
    // naming the last digit of the owner: computed by Reference/kernel_reference.py, and its first
    // slots checked by hand from the permutations above (list order .23 .22 .21):
    // round 1: .23 → 38, .22 → 91, .21 → 248; round 2: .23 → 115, .22 → 129, .21 → 246 (248 + 249 − 251) …
    private const string Expected251 =
        "32132222131332231332322313322223323322333213223313223333132221131232231332231312322213321322331312233213222113123213131222131332221332122313121223321312331213121113123213133221131212231332131332121213121312111312111113122113121213131212131112121311132";

    [Fact]
    public void Table_ForAKnownSet_MatchesTheExpectation()
    {
        var mh = KernelMh.Build([D("198.18.0.21:80", 1), D("198.18.0.22:80", 1), D("198.18.0.23:80", 1)], tabIndex: 8);
        var text = string.Concat(mh.Lookup.ToArray().Select(i => mh.Dests[i].Id[^4]));
        Assert.Equal(Expected251, text);
        Assert.Equal('3', text[38]);
        Assert.Equal('2', text[91]);
        Assert.Equal('1', text[248]);
        Assert.Equal('3', text[115]);
        Assert.Equal('2', text[129]);
        Assert.Equal('1', text[246]);
    }

    [Fact]
    public void Lookup_MatchesReferenceModel()
    {
        var mh = KernelMh.Build([D("198.18.0.21:80", 1), D("198.18.0.22:80", 1), D("198.18.0.23:80", 1)], tabIndex: 8);
        var flow = FlowKey.Parse("203.0.113.9:40000");
        // slot 113 with the port hashed (mh-port), 111 without.
        Assert.Equal(Expected251[113], mh.Dests[mh.Schedule(flow, true, false)].Id[^4]);
        Assert.Equal(Expected251[111], mh.Dests[mh.Schedule(flow, false, false)].Id[^4]);
    }

    [Fact]
    public void Table_DependsOnTheOrderDestinationsWereAdded()
    {
        var set = Enumerable.Range(0, 10).Select(i => D(SimulationServer.SyntheticId(i), 1)).ToArray();
        var forward = KernelMh.Build(set, 8);
        var backward = KernelMh.Build(set.Reverse().ToArray(), 8);
        var a = forward.Lookup.ToArray().Select(i => forward.Dests[i].Id).ToArray();
        var b = backward.Lookup.ToArray().Select(i => backward.Dests[i].Id).ToArray();
        Assert.NotEqual(a, b);   // same set, different tables: the kernel's mh is order-dependent

        // Merlin's Maglev is not.
        var m1 = MaglevTable.Build(set.Select(d => (d.Id, 1u)).ToArray(), 251);
        var m2 = MaglevTable.Build(set.Reverse().Select(d => (d.Id, 1u)).ToArray(), 251);
        Assert.Equal(m1.Select(i => set[i].Id), m2.Select(i => set[set.Length - 1 - i].Id));
    }

    [Fact]
    public void DrainedDestination_KeepsItsSlots_AndFlowsFallBack()
    {
        var dests = new[] { D("198.18.0.21:80", 1), D("198.18.0.22:80", 1), D("198.18.0.23:80", 1) };
        var before = KernelMh.Build(dests);
        var drainedSet = dests.Select((d, i) => i == 1 ? d.WithWeight(0) : d).ToArray();
        Assert.Equal(1, drainedSet[1].LastWeight);
        var after = KernelMh.Build(drainedSet);
        Assert.Equal(before.Lookup.ToArray(), after.Lookup.ToArray());   // built from last_weight

        var flows = SyntheticFlows.Generate(3000, 11);
        foreach (var f in flows)
        {
            int was = before.Schedule(f, true, false);
            Assert.Equal(was == 1 ? -1 : was, after.Schedule(f, true, false));
            int now = after.Schedule(f, true, true);
            Assert.NotEqual(1, now);
            if (was != 1) Assert.Equal(was, now);
        }
    }

    [Fact]
    public void AddedWithWeightZero_GetsNoSlots()
    {
        var mh = KernelMh.Build([D("198.18.0.21:80", 1), D("198.18.0.22:80", 0)], 8);
        Assert.DoesNotContain(1, mh.Lookup.ToArray());
        var none = KernelMh.Build([D("198.18.0.21:80", 0)], 8);
        Assert.All(none.Lookup.ToArray(), i => Assert.Equal(-1, i));
        Assert.Equal(-1, none.Schedule(FlowKey.Parse("10.0.0.1:1"), true, true));
    }

    [Fact]
    public void WeightsSetTheShare()
    {
        var mh = KernelMh.Build([D("198.18.0.21:80", 1), D("198.18.0.22:80", 3)]);
        var lookup = mh.Lookup.ToArray();
        double share = lookup.Count(i => i == 1) / (double)lookup.Length;
        Assert.InRange(share, 0.74, 0.76);
    }

    [Fact]
    public void MoreDestinationsThanSlots_IsRejected() =>
        Assert.Throws<ArgumentException>(() =>
            KernelMh.Build(Enumerable.Range(0, 252).Select(i => D(SimulationServer.SyntheticId(i), 1)).ToArray(), 8));
}
