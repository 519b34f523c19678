using System.Collections;
using System.Diagnostics.CodeAnalysis;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// An immutable dictionary that is another with some keys set or removed: a flat dictionary underneath and the changes
/// made since, looked up first. A layout patch changes a few of the assignment's 100,000 entries; a copy of them per
/// change was a fresh large array each time. The changes of one layered dictionary carry over to the next made from it,
/// so there is never more than one layer, and are folded into a new flat dictionary once they pass an eighth of it.
/// </summary>
internal sealed class LayeredDictionary<TKey, TValue> : IReadOnlyDictionary<TKey, TValue> where TKey : notnull
{
    private readonly Dictionary<TKey, TValue> _flat;
    // A present value, or absent (removed from the flat dictionary).
    private readonly Dictionary<TKey, (bool Present, TValue Value)> _changes;

    private LayeredDictionary(Dictionary<TKey, TValue> flat, Dictionary<TKey, (bool, TValue)> changes, int count)
    {
        (_flat, _changes, Count) = (flat, changes, count);
    }

    /// <summary><paramref name="source"/> with <paramref name="set"/> put and <paramref name="remove"/> taken out (set wins over remove).</summary>
    public static IReadOnlyDictionary<TKey, TValue> With(IReadOnlyDictionary<TKey, TValue> source, IEnumerable<KeyValuePair<TKey, TValue>> set, IEnumerable<TKey> remove)
    {
        Dictionary<TKey, TValue> flat;
        Dictionary<TKey, (bool, TValue)> changes;
        switch (source)
        {
            case LayeredDictionary<TKey, TValue> layered:
                flat = layered._flat;
                changes = new Dictionary<TKey, (bool, TValue)>(layered._changes, layered._changes.Comparer);
                break;
            case Dictionary<TKey, TValue> dictionary:
                flat = dictionary;
                changes = new Dictionary<TKey, (bool, TValue)>(dictionary.Comparer);
                break;
            default:
                flat = new Dictionary<TKey, TValue>(source);
                changes = new Dictionary<TKey, (bool, TValue)>(flat.Comparer);
                break;
        }
        int count = source.Count;
        bool Present(TKey key) => changes.TryGetValue(key, out var change) ? change.Item1 : flat.ContainsKey(key);
        foreach (var key in remove)
        {
            if (!Present(key)) continue;
            changes[key] = (false, default!);
            count--;
        }
        foreach (var (key, value) in set)
        {
            if (!Present(key)) count++;
            changes[key] = (true, value);
        }
        if (changes.Count <= Math.Max(64, flat.Count / 8)) return new LayeredDictionary<TKey, TValue>(flat, changes, count);
        var folded = new Dictionary<TKey, TValue>(count, flat.Comparer);
        foreach (var (key, value) in Enumerate(flat, changes)) folded[key] = value;
        return folded;
    }

    public int Count { get; }

    public TValue this[TKey key] => TryGetValue(key, out var value) ? value : throw new KeyNotFoundException($"{key} is not in the dictionary");

    public IEnumerable<TKey> Keys => this.Select(kv => kv.Key);

    public IEnumerable<TValue> Values => this.Select(kv => kv.Value);

    public bool ContainsKey(TKey key) => TryGetValue(key, out _);

    public bool TryGetValue(TKey key, [MaybeNullWhen(false)] out TValue value)
    {
        if (_changes.TryGetValue(key, out var change))
        {
            value = change.Present ? change.Value : default!;
            return change.Present;
        }
        return _flat.TryGetValue(key, out value);
    }

    public IEnumerator<KeyValuePair<TKey, TValue>> GetEnumerator() => Enumerate(_flat, _changes).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    private static IEnumerable<KeyValuePair<TKey, TValue>> Enumerate(Dictionary<TKey, TValue> flat, Dictionary<TKey, (bool Present, TValue Value)> changes)
    {
        foreach (var entry in flat)
            if (!changes.ContainsKey(entry.Key)) yield return entry;
        foreach (var (key, change) in changes)
            if (change.Present) yield return new(key, change.Value);
    }
}
