namespace Merlin.Hashing;

/// <summary>A server as a <see cref="MinimalDisruptionTable"/> knows it: its identity and the weight the table was made for.</summary>
public readonly record struct TableServer(string Id, uint Weight);

/// <summary>
/// A lookup table (slot → server) that changes as little as it must: the next table is derived from
/// the previous one, not from the server set alone. Looked up like <see cref="MaglevTable"/>
/// (<c>jhash … mod M</c>) and first sized like it (M ≥ 100·N, a prime from <see cref="MaglevTable.Sizes"/>); when it
/// must grow it grows to a multiple of its size (<see cref="GrowSize"/>), so growth alone moves no flow.
/// <para>
/// Each server of weight w holds between floor(M·w/W) − 1 and ceil(M·w/W) slots (its quota; see
/// <see cref="Quotas"/>), after any history of changes: never more than its share rounded up, which
/// bounds max / fair share by 1 + 1/share. A change moves only what the quotas force: a server that
/// left or went to weight 0 frees its slots; a server above its new quota frees the excess; the freed
/// slots go to the servers below theirs. Where the one-slot slack lets a server keep what it holds,
/// it does, so nothing moves for rounding.
/// </para>
/// <para>
/// Deterministic to the byte on every machine: servers are ordered by ordinal id, every tie is
/// broken by that order, all arithmetic is integer, and which of a server's slots it frees and which
/// free slot goes to whom follow one fixed walk over the slots. Because the table depends on its
/// history, it is computed once and stored (<see cref="Encode"/>); nodes read it, they do not rebuild it.
/// </para>
/// </summary>
public sealed class MinimalDisruptionTable
{
    private readonly TableServer[] _servers;
    private readonly int[] _owners;
    private ulong? _hash;

    private MinimalDisruptionTable(TableServer[] servers, int[] owners)
    {
        _servers = servers;
        _owners = owners;
    }

    /// <summary>The number of slots, M.</summary>
    public int Size => _owners.Length;

    /// <summary>The servers the table was made for, weight 0 ones included, in ordinal order of id.</summary>
    public IReadOnlyList<TableServer> Servers => _servers;

    /// <summary>Slot → index in <see cref="Servers"/>, or −1 when no server has weight.</summary>
    public ReadOnlySpan<int> Owners => _owners;

    /// <summary>The id of the server that owns <paramref name="slot"/>, or null.</summary>
    public string? OwnerId(int slot) => _owners[slot] < 0 ? null : _servers[_owners[slot]].Id;

    /// <summary>Slots per server, in the order of <see cref="Servers"/>.</summary>
    public int[] SlotCounts()
    {
        var counts = new int[_servers.Length];
        foreach (var o in _owners) if (o >= 0) counts[o]++;
        return counts;
    }

    /// <summary>FNV-1a 64 of the encoding: equal hashes, equal tables (what operators compare between nodes).</summary>
    public ulong Hash => _hash ??= TableEncoding.HashOf(this);

    /// <summary>The hash as <c>meradm</c> shows it: 16 hex digits.</summary>
    public string HashText => TableEncoding.FormatHash(Hash);

    /// <summary>A table made from nothing: the same servers give the same table on every machine.</summary>
    public static MinimalDisruptionTable Build(IReadOnlyList<(string Id, uint Weight)> servers, int? size = null) => Next(null, servers, size);

    /// <summary>The table that follows this one for a new server set.</summary>
    public MinimalDisruptionTable Next(IReadOnlyList<(string Id, uint Weight)> servers, int? size = null) => Next(this, servers, size);

    /// <summary>
    /// The table that follows <paramref name="previous"/> (null: none) for <paramref name="servers"/>.
    /// M is <paramref name="size"/> if given; else <see cref="MaglevTable.ChooseSize"/> for a first table, else
    /// <see cref="GrowSize"/> of the previous M — counting weight-0 servers too, so a drain never changes M. When M
    /// changes, each new slot starts with the owner of the old slot that covers its hashes (<c>jhash mod M</c> is a
    /// scaling of the hash: after growth to k·M, new slot s holds exactly hashes of old slot s / k; for any other new
    /// size, of the old slot under its middle), then the quotas apply.
    /// </summary>
    public static MinimalDisruptionTable Next(MinimalDisruptionTable? previous, IReadOnlyList<(string Id, uint Weight)> servers, int? size = null) =>
        Next(previous, servers, size, keep: null);

    /// <summary>
    /// As <see cref="Next(MinimalDisruptionTable?, IReadOnlyList{ValueTuple{string, uint}}, int?)"/>, but a server above its
    /// quota frees its slots in the order <paramref name="keep"/> gives (indexed by <paramref name="previous"/>'s slots):
    /// first those at 0, along the walk; then, only if it must, the others from the lowest value up. A slot that moved
    /// within the second-chance window and moves again leaves its connections from before the first move with no
    /// previous owner that has them, so the caller ranks such slots by what moving them again would strand.
    /// Only which slots move changes, never how many.
    /// </summary>
    public static MinimalDisruptionTable Next(MinimalDisruptionTable? previous, IReadOnlyList<(string Id, uint Weight)> servers, int? size, int[]? keep)
    {
        ArgumentNullException.ThrowIfNull(servers);
        var sorted = Canonical(servers);
        int n = sorted.Length;
        int m = size is int given
            ? (ValidateSize(given, n) is { } error ? throw new ArgumentOutOfRangeException(nameof(size), error) : given)
            : previous is null ? MaglevTable.ChooseSize(n) : GrowSize(n, previous.Size);

        // 1. Who holds each slot now, by the new server indices; −1 = free (its owner left or went to weight 0).
        var owners = new int[m];
        int[]? kept = null;
        if (previous is null) owners.AsSpan().Fill(-1);
        else
        {
            var index = new Dictionary<string, int>(n, StringComparer.Ordinal);
            for (int i = 0; i < n; i++) index[sorted[i].Id] = i;
            var map = new int[previous._servers.Length];
            for (int j = 0; j < map.Length; j++)
                map[j] = index.TryGetValue(previous._servers[j].Id, out var i) && sorted[i].Weight > 0 ? i : -1;
            int old = previous.Size;
            for (int s = 0; s < m; s++)
            {
                // The old slot whose hash range holds the middle of new slot s: the same slot when M is kept, and
                // s / k, which holds all of new slot s, when M grew k-fold.
                int from = old == m ? s : (int)(((2L * s + 1) * old) / (2L * m));
                int o = previous._owners[from];
                owners[s] = o < 0 ? -1 : map[o];
                if (keep is not null && keep[from] > 0) (kept ??= new int[m])[s] = keep[from];
            }
        }
        if (keep is not null && previous is not null && keep.Length != previous.Size)
            throw new ArgumentException($"keep has {keep.Length} entries for a table of {previous.Size} slots", nameof(keep));

        var counts = new int[n];
        foreach (var o in owners) if (o >= 0) counts[o]++;
        var quotas = Quotas(sorted, m, counts);

        // 2. Servers above quota free the excess, the first of their slots along the walk.
        int stride = Stride(m);
        var excess = new int[n];
        bool anyExcess = false;
        for (int i = 0; i < n; i++)
        {
            excess[i] = Math.Max(0, counts[i] - quotas[i]);
            anyExcess |= excess[i] > 0;
        }
        if (anyExcess)
        {
            // Slots ranked 0 go first, along the walk; the others wait, keyed (rank, walk position), for the few
            // servers that cannot free enough without them.
            List<long>? ranked = null;
            for (int j = 0, s = 0; j < m; j++, s = Step(s, stride, m))
            {
                int o = owners[s];
                if (o < 0 || excess[o] == 0) continue;
                if (kept is null || kept[s] == 0) { excess[o]--; owners[s] = -1; }
                else (ranked ??= []).Add(((long)kept[s] << 32) | (uint)j);
            }
            if (ranked is not null && excess.Any(e => e > 0))
            {
                ranked.Sort();
                foreach (var key in ranked)
                {
                    int s = (int)((uint)key * (long)stride % m), o = owners[s];   // the walk's j-th slot is j·stride mod M
                    if (excess[o] > 0) { excess[o]--; owners[s] = -1; }
                }
            }
        }

        // 3. Free slots, along the walk, go to the servers below quota: one each per round, in id order,
        // so a server's new slots are spread over the table rather than bunched.
        var deficit = new List<int>();
        var missing = new int[n];
        for (int i = 0; i < n; i++)
        {
            missing[i] = quotas[i] - Math.Min(counts[i], quotas[i]);
            if (missing[i] > 0) deficit.Add(i);
        }
        if (deficit.Count > 0)
        {
            int at = 0;
            for (int j = 0, s = 0; j < m && deficit.Count > 0; j++, s = Step(s, stride, m))
            {
                if (owners[s] >= 0) continue;
                int i = deficit[at];
                owners[s] = i;
                if (--missing[i] == 0)
                {
                    deficit.RemoveAt(at);   // rare enough (once per server) that the shift does not matter
                    if (at == deficit.Count) at = 0;
                }
                else if (++at == deficit.Count) at = 0;
            }
            if (deficit.Count > 0) throw new InvalidOperationException("quotas exceed the table size (a bug)");
        }
        return new MinimalDisruptionTable(sorted, owners);
    }

    /// <summary>
    /// M for a changed server set of <paramref name="serverCount"/> (weight-0 ones included) when the table has
    /// <paramref name="currentSize"/> slots: kept while it gives 100 slots a server (or is as large as
    /// <see cref="MaglevTable.ChooseSize"/> ever makes a table), else the smallest multiple of it that does.
    /// A multiple, because the kernel puts a flow in slot reciprocal_scale(hash, M) = (hash·M) &gt;&gt; 32
    /// (net/netfilter/nft_hash.c): with k·M slots, new slot s lies inside old slot s / k, so each new slot can keep
    /// the owner of every flow it holds. Any other new size puts about M new slots across an old slot boundary, and
    /// the flows on one side of each would change server with no previous owner recorded — out of second chance's
    /// reach. A table never shrinks by itself (a new M would move flows).
    /// </summary>
    public static int GrowSize(int serverCount, int currentSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(serverCount);
        if (ValidateSize(currentSize, 0) is not null) return MaglevTable.ChooseSize(serverCount);
        long want = Math.Min((long)serverCount * MaglevTable.SlotsPerBackend, MaglevTable.Sizes[^1]);
        if (serverCount > want) return MaglevTable.ChooseSize(serverCount);   // more servers than the largest table: it says so
        if (currentSize >= want) return currentSize;
        // currentSize < want ≤ the largest size, so k·M < 2 × the largest size: well within MaxSize.
        long k = (want + currentSize - 1) / currentSize;
        return (int)(k * currentSize);
    }

    /// <summary>
    /// Null if a minimal-disruption table of <paramref name="size"/> slots can hold <paramref name="serverCount"/>
    /// servers, else why not. Any size from 2 to <see cref="MaglevTable.MaxSize"/> will do: unlike Maglev's, this
    /// table has no skip that must be coprime to M, and growth makes multiples (<see cref="GrowSize"/>).
    /// </summary>
    public static string? ValidateSize(int size, int serverCount)
    {
        if (size < 2 || size > MaglevTable.MaxSize) return $"table size {size} is outside 2 to {MaglevTable.MaxSize}";
        if (size < serverCount) return $"table size {size} is smaller than the {serverCount} servers it must hold";
        return null;
    }

    /// <summary>
    /// Each server's slot count given what it holds (<paramref name="held"/>). With q = M·w/W the exact
    /// share, a count stays within [floor(q) − 1, ceil(q)]: never above the share rounded up (which is
    /// what bounds max / fair share), and at most one slot short of its floor. Within those bounds a
    /// server keeps what it holds; a server below floor(q) aims for floor(q). When the counts then add
    /// up to more than M, slots come off first where that undoes a gain (so a removal moves only the
    /// removed server's slots), then from the most over-served; when less than M, they go to the most
    /// under-served. A server that holds nothing (added, undrained) always gets at least its floor − 1
    /// and counts as a loss to trim, so it is not starved to spare others a move. Ties go by id order.
    /// All zero when no server has weight.
    /// </summary>
    internal static int[] Quotas(TableServer[] servers, int m, int[] held)
    {
        int n = servers.Length;
        var quotas = new int[n];
        ulong total = 0;
        foreach (var s in servers) total += s.Weight;
        if (total == 0) return quotas;
        var low = new int[n];
        var high = new int[n];
        long sum = 0;
        for (int i = 0; i < n; i++)
        {
            // M < 2^25 and w < 2^32: the product fits in 64 bits.
            ulong share = (ulong)m * servers[i].Weight;
            int floor = (int)(share / total);
            high[i] = floor + (share % total == 0 ? 0 : 1);
            low[i] = servers[i].Weight == 0 ? 0 : Math.Max(0, floor - 1);
            quotas[i] = Math.Clamp(held[i], Math.Min(floor, high[i]), high[i]);
            sum += quotas[i];
        }
        if (sum == m) return quotas;

        // How far over its exact share a server is at count v, times W: exact integer comparisons.
        Int128 Over(int i, int v) => (Int128)v * total - (Int128)((ulong)m * servers[i].Weight);
        var units = new List<(int Server, int Cost, Int128 Key)>();
        if (sum < m)
        {
            for (int i = 0; i < n; i++)
                for (int v = quotas[i] + 1; v <= high[i]; v++) units.Add((i, 0, Over(i, v)));
            units.Sort((a, b) => a.Key != b.Key ? a.Key.CompareTo(b.Key) : a.Server.CompareTo(b.Server));
            for (int k = 0; k < m - sum; k++) quotas[units[k].Server]++;
        }
        else
        {
            for (int i = 0; i < n; i++)
                for (int v = quotas[i]; v > low[i]; v--) units.Add((i, v > held[i] && held[i] > 0 ? 0 : 1, Over(i, v)));
            units.Sort((a, b) => a.Cost != b.Cost ? a.Cost.CompareTo(b.Cost) : a.Key != b.Key ? b.Key.CompareTo(a.Key) : a.Server.CompareTo(b.Server));
            if (units.Count < sum - m) throw new InvalidOperationException("quotas cannot add up to the table size (a bug)");
            for (int k = 0; k < sum - m; k++) quotas[units[k].Server]--;
        }
        return quotas;
    }

    /// <summary>The walk over the slots: s, s + stride, … mod M, which visits each slot once (stride coprime to M) and spreads neighbours apart.</summary>
    internal static int Stride(int m)
    {
        if (m <= 2) return 1;
        // About M/φ, nudged to the next value coprime to M (a grown M is a multiple, not a prime).
        int stride = (int)(((ulong)m * 0x9E3779B9UL) >> 32);
        if (stride < 1) stride = 1;
        while (Gcd(stride, m) != 1) stride++;
        return stride;
    }

    private static int Step(int s, int stride, int m)
    {
        int next = s + stride;
        return next >= m ? next - m : next;
    }

    private static int Gcd(int a, int b)
    {
        while (b != 0) (a, b) = (b, a % b);
        return a;
    }

    private static TableServer[] Canonical(IReadOnlyList<(string Id, uint Weight)> servers)
    {
        var sorted = new TableServer[servers.Count];
        for (int i = 0; i < sorted.Length; i++)
        {
            var (id, weight) = servers[i];
            if (string.IsNullOrEmpty(id)) throw new ArgumentException($"server {i} has no id", nameof(servers));
            sorted[i] = new TableServer(id, weight);
        }
        Array.Sort(sorted, (a, b) => string.CompareOrdinal(a.Id, b.Id));
        for (int i = 1; i < sorted.Length; i++)
            if (string.Equals(sorted[i - 1].Id, sorted[i].Id, StringComparison.Ordinal))
                throw new ArgumentException($"server \"{sorted[i].Id}\" appears twice; a table is made for a set", nameof(servers));
        return sorted;
    }

    /// <summary>
    /// The slots of <paramref name="after"/> whose owner is not the owner of the slot of <paramref name="before"/> that
    /// covers the same hashes (the same slot when M is the same; scaled as <see cref="Next(MinimalDisruptionTable?, IReadOnlyList{ValueTuple{string, uint}}, int?)"/>
    /// scales when M grew): the flows a change moved, in slots.
    /// </summary>
    public static int SlotsMoved(MinimalDisruptionTable before, MinimalDisruptionTable after)
    {
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(after);
        int m = after.Size, old = before.Size, moved = 0;
        for (int s = 0; s < m; s++)
        {
            int from = old == m ? s : (int)(((2L * s + 1) * old) / (2L * m));
            if (!string.Equals(before.OwnerId(from), after.OwnerId(s), StringComparison.Ordinal)) moved++;
        }
        return moved;
    }

    /// <summary>The compact encoding (<see cref="TableEncoding"/>), hash included.</summary>
    public byte[] Encode() => TableEncoding.Encode(this);

    /// <summary>Reads an encoding, checking everything (hash, size, indices); <see cref="TableFormatException"/> says what is wrong.</summary>
    public static MinimalDisruptionTable Decode(ReadOnlySpan<byte> bytes) => TableEncoding.Decode(bytes);

    internal static MinimalDisruptionTable FromParts(TableServer[] servers, int[] owners) => new(servers, owners);
}
