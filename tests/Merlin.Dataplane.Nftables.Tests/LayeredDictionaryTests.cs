using Merlin.Dataplane.Nftables.Layout;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// A layered dictionary (what a layout patch's assignment is made of) is at every step the dictionary it stands for:
/// random puts and removes on a chain of them, folded or not, against a plain dictionary changed alike; and an
/// earlier one is unchanged by the later ones made from it.
/// </summary>
public class LayeredDictionaryTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void RandomChanges_GiveWhatAPlainDictionaryGives_AndLeaveEarlierOnesAsTheyWere(int seed)
    {
        var random = new Random(seed);
        var plain = Enumerable.Range(0, 200).ToDictionary(i => $"k{i}", i => i);
        IReadOnlyDictionary<string, int> layered = new Dictionary<string, int>(plain, StringComparer.Ordinal);
        var history = new List<(IReadOnlyDictionary<string, int> Layered, Dictionary<string, int> Plain)>();
        for (int step = 0; step < 300; step++)
        {
            var put = Enumerable.Range(0, random.Next(0, 8)).Select(_ => new KeyValuePair<string, int>($"k{random.Next(260)}", random.Next())).ToList();
            var gone = Enumerable.Range(0, random.Next(0, 8)).Select(_ => $"k{random.Next(260)}").ToList();
            foreach (var key in gone) plain.Remove(key);
            foreach (var (key, value) in put) plain[key] = value;
            layered = LayeredDictionary<string, int>.With(layered, put, gone);

            Assert.Equal(plain.Count, layered.Count);
            Assert.Equal(plain.OrderBy(kv => kv.Key, StringComparer.Ordinal), layered.OrderBy(kv => kv.Key, StringComparer.Ordinal));
            for (int k = 0; k < 260; k++)
            {
                var key = $"k{k}";
                Assert.Equal(plain.TryGetValue(key, out var want), layered.TryGetValue(key, out var have));
                Assert.Equal(want, have);
                Assert.Equal(plain.ContainsKey(key), layered.ContainsKey(key));
            }
            history.Add((layered, new Dictionary<string, int>(plain)));
        }
        foreach (var (old, was) in history)
            Assert.Equal(was.OrderBy(kv => kv.Key, StringComparer.Ordinal), old.OrderBy(kv => kv.Key, StringComparer.Ordinal));
    }
}

/// <summary>
/// A patched set content (the state records after a layout patch) holds what a content made whole from the same
/// elements holds, across chunk boundaries: same elements in the same order, same digest, and the diff it remembers
/// is the diff a walk of both gives.
/// </summary>
public class PatchedContentTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void RandomPatches_OfManyChunks_EqualTheContentMadeWhole(int seed)
    {
        var random = new Random(seed);
        string Key(int i) => i.ToString("D6", System.Globalization.CultureInfo.InvariantCulture);
        var plain = Enumerable.Range(0, 3 * KeyedContent.MaxChunk + 100).Where(i => i % 3 != 0).ToDictionary(Key, i => $"{Key(i)} : v0");
        var content = KeyedContent.Of(plain.Select(kv => (kv.Key, kv.Value)));
        for (int step = 0; step < 60; step++)
        {
            // Some replaced, some removed, some new (before the first key, between chunks, after the last); now and then many at once.
            int n = step % 10 == 9 ? KeyedContent.MaxChunk + 10 : random.Next(1, 12);
            var put = Enumerable.Range(0, n).Select(_ => random.Next(-50, 3 * KeyedContent.MaxChunk + 200)).Distinct()
                .Select(i => (Key: i < 0 ? $"-{Key(-i)}" : Key(i), Element: $"v{step}")).ToList();
            var gone = Enumerable.Range(0, random.Next(0, 12)).Select(_ => Key(random.Next(0, 3 * KeyedContent.MaxChunk + 100))).ToList();
            var before = content;
            var expected = new Dictionary<string, string>(plain);
            foreach (var key in gone) expected.Remove(key);
            foreach (var (key, element) in put) expected[key] = $"{key} : {element}";

            content = content.Patched(gone, put.Select(p => (p.Key, $"{p.Key} : {p.Element}")));

            var whole = KeyedContent.Of(expected.Select(kv => (kv.Key, kv.Value)));
            Assert.Equal(whole.Elements(), content.Elements());
            Assert.Equal(whole.Count, content.Count);
            Assert.Equal(whole.Digest, content.Digest);
            Assert.Equal(whole.Hash, content.Hash);
            var remembered = SetContent.Diff(before, content);
            var walked = SetContent.Diff(KeyedContent.Of(before.Elements()), whole);
            Assert.Equal(walked.Delete, remembered.Delete);
            Assert.Equal(walked.Add, remembered.Add);
            plain = expected;
        }
    }
}
