using System.Net;
using System.Net.NetworkInformation;
using System.Security.Cryptography;
using System.Text;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// What a build keeps for the next one (server set analyses, map contents), what the script
/// writer streams, and what a write of ours reads back: reused only when nothing it depends on
/// changed, and giving the same bytes as the plain way.
/// </summary>
public class LayoutCacheTests
{
    private static readonly ServiceState A = Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80));
    private static readonly ServiceState B = Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80), Route("198.18.1.14", 80));

    private static LayoutBuilder.SetPlan SetOf(BuildCache cache, ServiceState service) => cache.Sets![service.Servers];

    [Fact]
    public void UnchangedServerSet_IsNotAnalyzedAgain_AChangedOneIs()
    {
        var cache = new BuildCache();
        var first = Build(State(A, B), cache: cache);
        var (setA, setB) = (SetOf(cache, A), SetOf(cache, B));
        var changedB = Service(B.Key, Route("198.18.1.13", 80, 3), Route("198.18.1.14", 80));

        // Services rebuilt from the store are new objects with the same content: still reused.
        var second = Build(State(Service(A.Key, Route("198.18.1.11", 80), Route("198.18.1.12", 80)), changedB), first.Assignment, cache: cache);

        Assert.Same(setA, SetOf(cache, A));
        Assert.NotSame(setB, SetOf(cache, changedB));
        Assert.False(cache.Sets!.ContainsKey(B.Servers));   // evicted: no service has B's old servers
        // And the result is what a build without any history gives.
        Assert.Equal(ScriptRenderer.Full(Build(State(A, changedB)).Ruleset), ScriptRenderer.Full(Build(State(A, changedB), second.Assignment, cache: cache).Ruleset));
    }

    [Fact]
    public void ServerSetWhoseMacChanged_IsAnalyzedAgain_AndItsMapFollowsTheNewMac()
    {
        var macs = MacsFor([A, B]);
        var cache = new BuildCache();
        var first = Build(State(A, B), macs: macs, cache: cache);
        var (setA, setB) = (SetOf(cache, A), SetOf(cache, B));
        var moved = new Dictionary<IPAddress, PhysicalAddress>(macs) { [IPAddress.Parse("198.18.1.12")] = PhysicalAddress.Parse("02-00-00-00-99-99") };

        var second = Build(State(A, B), first.Assignment, macs: moved, cache: cache);

        Assert.NotSame(setA, SetOf(cache, A));
        Assert.Same(setB, SetOf(cache, B));
        var map = second.Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements().Select(e => e.Element).ToList();
        Assert.Contains(map, e => e.EndsWith("02:00:00:00:99:99", StringComparison.Ordinal));
        Assert.DoesNotContain(map, e => e.EndsWith("02:00:c6:12:01:0c", StringComparison.Ordinal));
    }

    [Fact]
    public void ServerSetWhoseMacBecameKnown_IsAnalyzedAgain()
    {
        var macs = MacsFor([A]);
        macs.Remove(IPAddress.Parse("198.18.1.12"));
        var cache = new BuildCache();
        var first = Build(State(A), macs: macs, cache: cache);
        var setA = SetOf(cache, A);

        var second = Build(State(A), first.Assignment, macs: MacsFor([A]), cache: cache);

        Assert.NotSame(setA, SetOf(cache, A));
        Assert.Empty(second.Unresolved);
        Assert.Equal(2, Assert.Single(second.Pinned).Macs.Count);
    }

    [Theory]
    [InlineData("seed")]
    [InlineData("interface")]
    [InlineData("own mac")]
    public void AnalysesMadeUnderOtherOptions_AreNeverReused(string what)
    {
        var options = Options();
        var cache = new BuildCache();
        var first = Build(State(A, B), options: options, cache: cache);
        var (setA, setB) = (SetOf(cache, A), SetOf(cache, B));
        var other = what switch
        {
            "seed" => options with { HashSeed = 0x1234 },
            "interface" => options with { Interface = "eth1" },
            _ => options with { OwnMac = PhysicalAddress.Parse("02-00-00-00-00-BB") },
        };

        var second = Build(State(A, B), first.Assignment, options: other, cache: cache);

        Assert.NotSame(setA, SetOf(cache, A));
        Assert.NotSame(setB, SetOf(cache, B));
        Assert.Equal(LayoutBuilder.SetOptions(other, other.OwnMac), cache.Options);
        Assert.Equal(ScriptRenderer.Full(Build(State(A, B), options: other).Ruleset), ScriptRenderer.Full(second.Ruleset));
    }

    [Fact]
    public void AMapOfAnotherSize_IsNeverReused()
    {
        // Two servers: M = 251; a third makes M = 509. The new map is built anew, at its new size.
        var first = Build(State(A));
        var grown = Service(A.Key, Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.15", 80));

        var second = Build(State(grown), first.Assignment);

        var before = first.Ruleset.Table("netdev", "merlin")!.Sets.Values.Single(s => s.Name.StartsWith('d'));
        var after = second.Ruleset.Table("netdev", "merlin")!.Sets.Values.Single(s => s.Name.StartsWith('d'));
        Assert.NotSame(before.Content, after.Content);
        Assert.Contains("mod 509", after.Declaration);
        Assert.Equal(509, after.Content.Count);
        Assert.Equal(Build(State(grown)).Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements(), after.Content.Elements());
    }

    [Fact]
    public void ContentHash_IsTheHashOfItsElementTexts()
    {
        var layout = Build(State(A, B));
        foreach (var set in layout.Ruleset.Tables.SelectMany(t => t.Sets.Values).Where(s => !s.Dynamic))
        {
            var text = string.Concat(set.Content.Elements().Select(e => e.Element + "\n"));
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text))), set.Content.Hash);
        }
    }

    [Fact]
    public void StreamedScript_IsByteForByteTheScriptText()
    {
        // More than one command's worth of elements, so the batching shows.
        var big = Service(Tcp("198.18.0.20", 80), Enumerable.Range(1, 12).Select(i => Route($"198.18.2.{i}", 80)).ToArray());
        var script = ScriptRenderer.DiffScript(NftRuleset.Empty, Build(State(A, B, big)).Ruleset);
        using var stream = new MemoryStream();

        script.WriteTo(stream);

        var text = Encoding.UTF8.GetString(stream.ToArray());
        Assert.Equal(script.ToString(), text);
        Assert.Equal(text.Count(c => c == '\n'), script.Lines);
        var map = text.Split('\n').Where(l => l.StartsWith("add element netdev merlin d", StringComparison.Ordinal)).ToList();
        Assert.Contains(map, l => l.Split(", ").Length == ScriptRenderer.ElementsPerCommand);
    }

    [Fact]
    public void Touched_IsWhatTheDiffDeclaresAnew_NotWhatItOnlyEditsElementsOf()
    {
        var first = Build(State(A, B));
        var weight = Build(State(Service(A.Key, Route("198.18.1.11", 80, 2), Route("198.18.1.12", 80)), B), first.Assignment);
        var added = Build(State(A, B, Service(Tcp("198.18.0.12", 80), Route("198.18.1.16", 80))), first.Assignment);

        var (chains, sets) = TableWriter.Touched(first.Ruleset.Tables[0], weight.Ruleset.Tables[0]);
        Assert.Empty(chains);
        Assert.Equal(["marker"], sets);   // the map and the state records only change elements

        (chains, sets) = TableWriter.Touched(first.Ruleset.Tables[0], added.Ruleset.Tables[0]);
        Assert.Equal(["d3_4p"], chains);
        Assert.Equal(["d3", "marker"], sets.Order(StringComparer.Ordinal));
    }
}
