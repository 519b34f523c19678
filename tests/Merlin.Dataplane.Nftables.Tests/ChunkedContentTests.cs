using Merlin.Dataplane.Nftables.Layout;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The live sets' content, a chunk per service: the same diff as the flat set of all its elements.</summary>
public class ChunkedContentTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void Diff_IsTheDiffOfTheFlatElements_ChunksKeptOrNot(int seed)
    {
        var random = new Random(seed);
        var from = Chunks(random, null);
        for (int step = 0; step < 20; step++)
        {
            var to = Chunks(random, from);

            var (delete, add) = SetContent.Diff(new ChunkedContent(from), new ChunkedContent(to));

            var (flatDelete, flatAdd) = SetContent.Diff(Flat(from), Flat(to));
            Assert.Equal(flatDelete, delete);
            Assert.Equal(flatAdd.Order(StringComparer.Ordinal), add.Order(StringComparer.Ordinal));
            Assert.Equal(Flat(to).Count, new ChunkedContent(to).Count);
            from = to;
        }
    }

    [Fact]
    public void Hash_FollowsTheChunks_NotTheirInstances()
    {
        var a = KeyedContent.Of([("198.18.0.10 . tcp . 80 . 02:00:00:00:00:01", "198.18.0.10 . tcp . 80 . 02:00:00:00:00:01")]);
        var same = KeyedContent.Of([("198.18.0.10 . tcp . 80 . 02:00:00:00:00:01", "198.18.0.10 . tcp . 80 . 02:00:00:00:00:01")]);
        var other = KeyedContent.Of([("198.18.0.10 . tcp . 80 . 02:00:00:00:00:02", "198.18.0.10 . tcp . 80 . 02:00:00:00:00:02")]);

        Assert.Equal(new ChunkedContent([("198.18.0.10 . tcp . 80", a)]).Hash, new ChunkedContent([("198.18.0.10 . tcp . 80", same)]).Hash);
        Assert.NotEqual(new ChunkedContent([("198.18.0.10 . tcp . 80", a)]).Hash, new ChunkedContent([("198.18.0.10 . tcp . 80", other)]).Hash);
    }

    /// <summary>Services 0–29, each present with chance 3/4, with 0–4 MACs; a chunk of <paramref name="before"/> is kept (the same instance) half the time.</summary>
    private static List<(string Name, SetContent Chunk)> Chunks(Random random, List<(string Name, SetContent Chunk)>? before)
    {
        var had = before?.ToDictionary(c => c.Name, c => c.Chunk) ?? [];
        var chunks = new List<(string, SetContent)>();
        for (int s = 0; s < 30; s++)
        {
            if (random.Next(4) == 0) continue;
            var name = $"198.18.0.{s} . tcp . 80";
            if (had.TryGetValue(name, out var kept) && random.Next(2) == 0) { chunks.Add((name, kept)); continue; }
            var macs = Enumerable.Range(0, 5).Where(_ => random.Next(2) == 0).Select(m => $"{name} . 02:00:00:00:00:{m:x2}");
            chunks.Add((name, KeyedContent.Of(macs.Select(e => (e, e)))));
        }
        return chunks;
    }

    private static KeyedContent Flat(List<(string Name, SetContent Chunk)> chunks) => KeyedContent.Of(chunks.SelectMany(c => c.Chunk.Elements()));
}
