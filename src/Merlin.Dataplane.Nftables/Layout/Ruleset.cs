using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// The elements of one set or map, as nft text: each element has a key (what <c>delete element</c>
/// names) and its whole text (what <c>add element</c> writes). Immutable; its hash is computed once,
/// so an unchanged map shared between two layouts costs nothing to compare.
/// </summary>
internal abstract class SetContent
{
    private string? _hash;

    public abstract int Count { get; }

    public abstract IEnumerable<(string Key, string Element)> Elements();

    /// <summary>SHA-256 of every element's text, each followed by a newline, in order.</summary>
    public string Hash => _hash ??= ComputeHash();

    private protected UInt128? _digest;

    /// <summary>
    /// What the ruleset's fingerprint takes of this content (<see cref="NftRuleset.Fingerprint"/>): the sum of its
    /// elements' <see cref="Digests.Of(string)"/>, so a content patched from another has its digest from the other's
    /// with the changed elements' taken out and put in. A map of slots, always made whole, gives its hash's first bytes.
    /// </summary>
    public UInt128 Digest => _digest ??= ComputeDigest();

    protected virtual UInt128 ComputeDigest()
    {
        UInt128 sum = 0;
        foreach (var (_, element) in Elements()) sum += Digests.Of(element);
        return sum;
    }

    private string ComputeHash()
    {
        using var sha = new HashWriter();
        WriteElements(sha);
        return sha.Finish();
    }

    /// <summary>Every element's text followed by a newline, as UTF-8, in order (what <see cref="Hash"/> hashes).</summary>
    protected virtual void WriteElements(HashWriter to)
    {
        foreach (var (_, element) in Elements())
        {
            to.Append(element);
            to.Append((byte)'\n');
        }
    }

    public static readonly SetContent Empty = KeyedContent.Of([]);

    /// <summary>Keys to delete and elements to add to turn <paramref name="from"/> into <paramref name="to"/>.</summary>
    public static (List<string> Delete, List<string> Add) Diff(SetContent from, SetContent to)
    {
        var delete = new List<string>();
        var add = new List<string>();
        if (ReferenceEquals(from, to)) return (delete, add);
        // A content patched from this very one knows its difference: no hash of either, no walk of either.
        if (to is KeyedContent { Patch: { } patch } && ReferenceEquals(patch.Base, from)) return ([.. patch.Delete], [.. patch.Add]);
        if (from.Hash == to.Hash) return (delete, add);
        if (from is SlotContent a && to is SlotContent b && a.Length == b.Length)
        {
            for (int i = 0; i < a.Length; i++)
            {
                var x = a.ValueAt(i);
                var y = b.ValueAt(i);
                if (string.Equals(x, y, StringComparison.Ordinal)) continue;
                if (x is not null) delete.Add(SlotContent.KeyText(i));
                if (y is not null) add.Add(SlotContent.ElementText(i, y));
            }
            return (delete, add);
        }
        var old = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, element) in from.Elements()) old[key] = element;
        foreach (var (key, element) in to.Elements())
        {
            if (old.Remove(key, out var was))
            {
                if (was == element) continue;
                delete.Add(key);
            }
            add.Add(element);
        }
        delete.AddRange(old.Keys);
        delete.Sort(StringComparer.Ordinal);
        return (delete, add);
    }
}

/// <summary>A map from slot number 0…M-1 to a value (a Maglev table); null slots hold no element.</summary>
/// <remarks>
/// Held as each slot's owner — an index into the few distinct values (one per server) — in chunks of
/// <see cref="ChunkSlots"/>: a map of M = 131,071 would otherwise be one 1 MiB array of references per build, on the
/// large-object heap, whose budget is what starts gen-2 collections. Chunks of 64 KiB stay below it.
/// </remarks>
internal sealed class SlotContent : SetContent
{
    private const int ChunkBits = 14;
    /// <summary>Slots per chunk: 16,384 owner indices, 64 KiB (the large-object heap starts at 85,000 bytes).</summary>
    internal const int ChunkSlots = 1 << ChunkBits;
    private const int ChunkMask = ChunkSlots - 1;

    private readonly string?[] _values;
    private readonly int[][] _owners;
    private readonly int _length;
    private readonly int _count;

    /// <summary>From each slot's value (tests; few distinct instances expected, as a Maglev table has).</summary>
    public SlotContent(string?[] values) : this(values.Length)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        var distinct = new List<string?>();
        for (int i = 0; i < values.Length; i++)
        {
            int owner = -1;
            if (values[i] is { } value && !index.TryGetValue(value, out owner))
            {
                index[value] = owner = distinct.Count;
                distinct.Add(value);
            }
            _owners[i >> ChunkBits][i & ChunkMask] = owner;
            if (owner >= 0) _count++;
        }
        _values = [.. distinct];
    }

    /// <summary>
    /// From each slot's owner, an index into <paramref name="values"/> (negative, or a null value: no element).
    /// <paramref name="owners"/> may be a pooled buffer: it is copied.
    /// </summary>
    public SlotContent(ReadOnlySpan<int> owners, string?[] values) : this(owners.Length)
    {
        _values = values;
        for (int c = 0; c < _owners.Length; c++)
        {
            var chunk = _owners[c];
            owners.Slice(c << ChunkBits, chunk.Length).CopyTo(chunk);
            for (int i = 0; i < chunk.Length; i++)
            {
                if (chunk[i] >= 0 && values[chunk[i]] is null) chunk[i] = -1;
                if (chunk[i] >= 0) _count++;
            }
        }
    }

    private SlotContent(int length)
    {
        _length = length;
        _owners = new int[(length + ChunkMask) >> ChunkBits][];
        for (int c = 0; c < _owners.Length; c++) _owners[c] = new int[Math.Min(ChunkSlots, length - (c << ChunkBits))];
        _values = [];
    }

    public int Length => _length;

    public override int Count => _count;

    public string? ValueAt(int slot)
    {
        int owner = _owners[slot >> ChunkBits][slot & ChunkMask];
        return owner < 0 ? null : _values[owner];
    }

    /// <summary>The same bytes as the base class writes, without a string per element: a map of 1,021 slots hashes in microseconds.</summary>
    protected override void WriteElements(HashWriter to)
    {
        string? last = null;
        byte[] bytes = [];
        for (int i = 0; i < _length; i++)
        {
            var value = ValueAt(i);
            if (value is null) continue;
            // A Maglev table has few distinct values (one per server), each one string instance.
            if (!ReferenceEquals(value, last)) { bytes = Encoding.UTF8.GetBytes(value); last = value; }
            to.Append(i);
            to.Append(" : "u8);
            to.Append(bytes);
            to.Append((byte)'\n');
        }
    }

    protected override UInt128 ComputeDigest() => BinaryPrimitives.ReadUInt128LittleEndian(Convert.FromHexString(Hash.AsSpan(0, 32)));

    public override IEnumerable<(string Key, string Element)> Elements()
    {
        for (int i = 0; i < _length; i++)
            if (ValueAt(i) is { } value) yield return (KeyText(i), ElementText(i, value));
    }

    public static string KeyText(int slot) => slot.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public static string ElementText(int slot, string value) => $"{KeyText(slot)} : {value}";
}

/// <summary>An incremental SHA-256 fed through a buffer, so many small texts cost one hash call per 64 KiB.</summary>
internal sealed class HashWriter : BufferedUtf8Writer
{
    private readonly IncrementalHash _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    protected override void Write(ReadOnlySpan<byte> bytes) => _sha.AppendData(bytes);

    public string Finish()
    {
        Flush();
        return Convert.ToHexStringLower(_sha.GetHashAndReset());
    }

    public override void Dispose()
    {
        _sha.Dispose();
        base.Dispose();
    }
}

/// <summary>Elements keyed by their key text, kept in ordinal order so renders are deterministic.</summary>
/// <remarks>
/// Held in chunks of at most <see cref="MaxChunk"/> elements (each below the large-object heap's 85,000 bytes), so a
/// patch copies the chunks it changes and the list of chunks, not 120,000 elements: a fresh large array per build
/// had the kernel zero new pages for it, which cost more than the copy itself.
/// </remarks>
internal sealed class KeyedContent : SetContent
{
    internal const int MaxChunk = 2048;
    private readonly (string Key, string Element)[][] _chunks;
    private readonly int _count;

    private KeyedContent((string Key, string Element)[][] chunks)
    {
        _chunks = chunks;
        foreach (var chunk in chunks) _count += chunk.Length;
    }

    private static KeyedContent FromSorted(List<(string Key, string Element)> sorted)
    {
        var chunks = new (string, string)[(sorted.Count + MaxChunk - 1) / MaxChunk][];
        for (int c = 0; c < chunks.Length; c++)
            chunks[c] = sorted.GetRange(c * MaxChunk, Math.Min(MaxChunk, sorted.Count - c * MaxChunk)).ToArray();
        return new KeyedContent(chunks);
    }

    /// <summary>What <see cref="Patched"/> made this content from: <see cref="SetContent.Diff"/> from that base is this, without a walk.</summary>
    internal sealed record PatchInfo(SetContent Base, List<string> Delete, List<string> Add);

    // Only the newest patched content keeps its base: a patch made from this one drops it, so a chain of patches
    // never keeps every earlier state set alive (a diff from an older base goes the long way, by content).
    private PatchInfo? _patch;

    internal PatchInfo? Patch => _patch;

    /// <summary>
    /// This content with the elements of <paramref name="remove"/> gone and <paramref name="put"/> added or replacing the
    /// element of the same key: the chunks the changes fall in are made anew, the others shared (no sort, no hash), and
    /// the difference from this content kept exactly as <see cref="SetContent.Diff"/> would give it (deletes in key
    /// order, adds in the new order).
    /// </summary>
    public KeyedContent Patched(IEnumerable<string> remove, IEnumerable<(string Key, string Element)> put)
    {
        var changes = new SortedDictionary<string, string?>(StringComparer.Ordinal);
        foreach (var key in remove) changes[key] = null;
        foreach (var (key, element) in put) changes[key] = element;
        var digest = Digest;
        var delete = new List<string>();
        var add = new List<string>();
        // The changes by chunk: a key goes to the last chunk whose first key is not after it.
        var byChunk = new SortedDictionary<int, List<(string Key, string? Element)>>();
        foreach (var (key, element) in changes)
        {
            int c = ChunkOf(key);
            if (!byChunk.TryGetValue(c, out var list)) byChunk[c] = list = [];
            list.Add((key, element));
        }
        var chunks = new List<(string Key, string Element)[]>(_chunks.Length + 1);
        int next = 0;
        foreach (var (c, list) in byChunk)
        {
            for (; next < c; next++) chunks.Add(_chunks[next]);
            next = c + 1;
            var had = c < _chunks.Length ? _chunks[c] : [];
            var merged = new List<(string Key, string Element)>(had.Length + list.Count);
            int i = 0;
            foreach (var (key, element) in list)
            {
                while (i < had.Length && string.CompareOrdinal(had[i].Key, key) < 0) merged.Add(had[i++]);
                if (i < had.Length && had[i].Key == key)
                {
                    var was = had[i++].Element;
                    if (element is null) { delete.Add(key); digest -= Digests.Of(was); continue; }
                    merged.Add((key, element));
                    if (element != was)
                    {
                        delete.Add(key);
                        add.Add(element);
                        digest += Digests.Of(element) - Digests.Of(was);
                    }
                }
                else if (element is not null)
                {
                    merged.Add((key, element));
                    add.Add(element);
                    digest += Digests.Of(element);
                }
            }
            while (i < had.Length) merged.Add(had[i++]);
            for (int at = 0; at < merged.Count; at += MaxChunk) chunks.Add(merged.GetRange(at, Math.Min(MaxChunk, merged.Count - at)).ToArray());
        }
        for (; next < _chunks.Length; next++) chunks.Add(_chunks[next]);
        delete.Sort(StringComparer.Ordinal);
        _patch = null;
        return new KeyedContent([.. chunks]) { _patch = new PatchInfo(this, delete, add), _digest = digest };
    }

    /// <summary>The chunk a key belongs in: the last whose first key is not after it (the first chunk for a smaller key; 0 when there is none).</summary>
    private int ChunkOf(string key)
    {
        int lo = 1, hi = _chunks.Length - 1, found = 0;
        while (lo <= hi)
        {
            int mid = lo + ((hi - lo) >> 1);
            if (string.CompareOrdinal(_chunks[mid][0].Key, key) <= 0) { found = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        return found;
    }

    public override int Count => _count;

    public override IEnumerable<(string Key, string Element)> Elements()
    {
        foreach (var chunk in _chunks)
            foreach (var element in chunk)
                yield return element;
    }

    /// <summary>The elements in ordinal order of their keys; of elements with the same key, the last one.</summary>
    public static KeyedContent Of(IEnumerable<(string Key, string Element)> elements)
    {
        var list = elements.ToArray();
        // A stable sort by key, so that "the last one wins" below means the last one given.
        var order = new int[list.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        Array.Sort(order, (x, y) =>
        {
            int c = string.CompareOrdinal(list[x].Key, list[y].Key);
            return c != 0 ? c : x.CompareTo(y);
        });
        var result = new List<(string, string)>(list.Length);
        for (int i = 0; i < order.Length; i++)
        {
            if (i + 1 < order.Length && string.Equals(list[order[i]].Key, list[order[i + 1]].Key, StringComparison.Ordinal)) continue;
            result.Add(list[order[i]]);
        }
        return FromSorted(result);
    }
}

/// <summary>
/// One set or map: <paramref name="Kind"/> is "set" or "map", <paramref name="Declaration"/> the text
/// between its braces. A <paramref name="Dynamic"/> set is filled by the packet path (pinned flows):
/// we declare it and never write or read its elements.
/// </summary>
internal sealed record NftSet(string Name, string Kind, string Declaration, SetContent Content, bool Dynamic = false)
{
    private Cached<UInt128>? _digest;

    /// <summary>What the fingerprint takes of this set: its declaration and (unless dynamic) its content's digest; made once per set object.</summary>
    public UInt128 FingerprintDigest()
    {
        if (_digest is { } c && c.Valid(Declaration, Content, Name)) return c.Value;
        var text = $"{Kind} {Name} {{ {Declaration} }}" + (Dynamic ? "" : "\n" + Content.Digest.ToString("x32", System.Globalization.CultureInfo.InvariantCulture));
        var value = Digests.Of(text);
        _digest = new Cached<UInt128>(Declaration, Content, Name, value);
        return value;
    }
}

/// <summary>The 128-bit digests the fingerprint adds up: the first 16 bytes of a SHA-256.</summary>
internal static class Digests
{
    public static UInt128 Of(ReadOnlySpan<byte> bytes)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(bytes, hash);
        return BinaryPrimitives.ReadUInt128LittleEndian(hash);
    }

    public static UInt128 Of(string text)
    {
        int max = Encoding.UTF8.GetMaxByteCount(text.Length);
        if (max <= 512)
        {
            Span<byte> small = stackalloc byte[512];
            return Of(small[..Encoding.UTF8.GetBytes(text, small)]);
        }
        var rented = ArrayPool<byte>.Shared.Rent(max);
        try { return Of(rented.AsSpan(0, Encoding.UTF8.GetBytes(text, rented))); }
        finally { ArrayPool<byte>.Shared.Return(rented); }
    }
}

/// <summary>A chain: <paramref name="Base"/> is the hook spec of a base chain (null for a regular chain).</summary>
internal sealed record NftChain(string Name, string? Base, IReadOnlyList<string> Rules)
{
    private Cached<byte[]>? _fingerprint;

    /// <summary>
    /// What <see cref="NftRuleset.Fingerprint"/> hashes of this chain, as UTF-8, made once: a build
    /// after a change reuses the chains that did not change, and with them these bytes.
    /// </summary>
    public byte[] FingerprintBytes()
    {
        if (_fingerprint is { } c && c.Valid(Name, Base, Rules)) return c.Value;
        var text = new StringBuilder();
        text.Append("chain ").Append(Name).Append(' ').Append(Base).Append('\n');
        foreach (var rule in Rules) text.Append(rule).Append('\n');
        var bytes = Encoding.UTF8.GetBytes(text.ToString());
        _fingerprint = new Cached<byte[]>(Name, Base, Rules, bytes);
        return bytes;
    }

    private Cached<UInt128>? _digest;

    /// <summary>What the fingerprint takes of this chain: the digest of <see cref="FingerprintBytes"/>, made once.</summary>
    public UInt128 FingerprintDigest()
    {
        if (_digest is { } c && c.Valid(Name, Base, Rules)) return c.Value;
        var value = Digests.Of(FingerprintBytes());
        _digest = new Cached<UInt128>(Name, Base, Rules, value);
        return value;
    }

    public bool SameAs(NftChain other) => ReferenceEquals(this, other) || (Base == other.Base && Rules.SequenceEqual(other.Rules, StringComparer.Ordinal));

    /// <summary>Whether a rule of this chain names the set <paramref name="set"/> (<c>@name</c>).</summary>
    public bool References(string set) => Rules.Any(r => ReferencesSet(r, set));

    internal static bool ReferencesSet(string rule, string set)
    {
        var needle = "@" + set;
        for (int at = rule.IndexOf(needle, StringComparison.Ordinal); at >= 0; at = rule.IndexOf(needle, at + 1, StringComparison.Ordinal))
        {
            int end = at + needle.Length;
            if (end == rule.Length || !(char.IsAsciiLetterOrDigit(rule[end]) || rule[end] == '_')) return true;
        }
        return false;
    }
}

/// <summary>A value made from some objects, valid while a record still holds those very objects (a <c>with</c> copy may not).</summary>
internal sealed class Cached<T>(object? a, object? b, object? c, T value)
{
    public T Value { get; } = value;

    public bool Valid(object? x, object? y, object? z) => ReferenceEquals(a, x) && ReferenceEquals(b, y) && ReferenceEquals(c, z);
}

/// <summary>One table as we want it in the kernel.</summary>
internal sealed record NftTable(string Family, string Name, IReadOnlyDictionary<string, NftSet> Sets, IReadOnlyDictionary<string, NftChain> Chains)
{
    private Cached<NftSet[]>? _orderedSets;
    private Cached<NftChain[]>? _orderedChains;

    /// <summary>The sets by name, sorted once per table (a diff and the fingerprint walk them several times).</summary>
    public IReadOnlyList<NftSet> OrderedSets
    {
        get
        {
            if (_orderedSets is { } c && c.Valid(Sets, null, null)) return c.Value;
            var ordered = Sets.Values.OrderBy(s => s.Name, StringComparer.Ordinal).ToArray();
            _orderedSets = new(Sets, null, null, ordered);
            return ordered;
        }
    }

    /// <summary>
    /// This table with <paramref name="replaced"/> in place of its sets of the same names (all of which it has): the
    /// sorted order carried over with those entries replaced, not sorted again (a patch of 10,000 sets).
    /// </summary>
    public NftTable WithSetsReplaced(IReadOnlyCollection<NftSet> replaced, bool sameBuild = false)
    {
        var sets = new Dictionary<string, NftSet>(Sets.Count, StringComparer.Ordinal);
        foreach (var (name, set) in Sets) sets[name] = set;
        var ordered = OrderedSets.ToArray();
        foreach (var set in replaced)
        {
            if (!sets.ContainsKey(set.Name)) throw new ArgumentException($"table {Id} has no set {set.Name} to replace", nameof(replaced));
            sets[set.Name] = set;
            int lo = 0, hi = ordered.Length - 1;
            while (true)
            {
                int mid = lo + ((hi - lo) >> 1);
                int c = string.CompareOrdinal(ordered[mid].Name, set.Name);
                if (c == 0) { ordered[mid] = set; break; }
                if (c < 0) lo = mid + 1;
                else hi = mid - 1;
            }
        }
        var table = this with { Sets = sets };
        table._orderedSets = new(sets, null, null, ordered);
        // What changed since the table this one was patched from. Within one build (the marker replaced after the
        // patch) the changes add up against the last layout's table; that table's own patch is dropped, so only one
        // level is ever kept (its diff was written when it was).
        if (sameBuild && Patch is { } had)
        {
            table.Patch = new TablePatch(had.From, [.. had.Changed.Concat(replaced.Select(r => r.Name)).Distinct().Order(StringComparer.Ordinal)]);
        }
        else
        {
            table.Patch = new TablePatch(this, [.. replaced.Select(r => r.Name).Distinct().Order(StringComparer.Ordinal)]);
            Patch = null;
        }
        return table;
    }

    /// <summary>The table this one was made from by replacing sets (<see cref="WithSetsReplaced"/>), and their names in order.</summary>
    internal sealed record TablePatch(NftTable From, string[] Changed);

    /// <summary>Set by <see cref="WithSetsReplaced"/>: a diff from <see cref="TablePatch.From"/> need look at those sets only.</summary>
    internal TablePatch? Patch { get; private set; }

    /// <summary>Base chains first, then by name; sorted once per table.</summary>
    public IReadOnlyList<NftChain> OrderedChains
    {
        get
        {
            if (_orderedChains is { } c && c.Valid(Chains, null, null)) return c.Value;
            var ordered = Chains.Values.OrderBy(c => c.Base is null).ThenBy(c => c.Name, StringComparer.Ordinal).ToArray();
            _orderedChains = new(Chains, null, null, ordered);
            return ordered;
        }
    }

    public string Id => $"{Family} {Name}";
}

/// <summary>Everything this dataplane programs: zero, one or two tables.</summary>
internal sealed record NftRuleset(IReadOnlyList<NftTable> Tables)
{
    public static readonly NftRuleset Empty = new([]);

    public NftTable? Table(string family, string name) => Tables.FirstOrDefault(t => t.Family == family && t.Name == name);

    /// <summary>
    /// A hash of everything in the ruleset except the marker set itself (which carries this hash): what the
    /// generation marker records. Per table, the sum of its chains' and sets' digests, each made once per object (a
    /// set or chain a build kept costs an addition), mixed with the table's name; the tables' results added up. So
    /// a build after a small change hashes what it changed, not the whole ruleset.
    /// </summary>
    public string Fingerprint(string markerSet)
    {
        UInt128 total = 0;
        Span<byte> mixed = stackalloc byte[16];
        foreach (var table in Tables)
        {
            UInt128 sum = 0;
            foreach (var chain in table.Chains.Values) sum += chain.FingerprintDigest();
            foreach (var set in table.Sets.Values)
                if (set.Name != markerSet) sum += set.FingerprintDigest();
            BinaryPrimitives.WriteUInt128LittleEndian(mixed, sum);
            total += Digests.Of($"table {table.Id} {Convert.ToHexStringLower(mixed)}");
        }
        return total.ToString("x32", System.Globalization.CultureInfo.InvariantCulture);
    }
}
