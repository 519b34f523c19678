using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Merlin.Hashing;

/// <summary>
/// Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
/// Balancer", NSDI'16, section 3.4), the table the nftables dataplane indexes with
/// <c>jhash … mod M</c>.
/// <para>
/// The table is a pure function of the backend SET: identities are sorted (ordinal) before the
/// table is filled, so every node computes the same table whatever order it learned the servers
/// in. (The kernel's mh scheduler fills in the order servers were added; see <see cref="KernelMh"/>.)
/// Each backend's preference list comes from two SipHash-2-4 hashes of its identity string with
/// fixed keys: offset = h1 mod M, skip = h2 mod (M-1) + 1. Those keys are frozen: changing them
/// reshuffles every table of every node running a different build.
/// </para>
/// <para>
/// Weights: every backend with weight &gt; 0 claims one slot in the first round, which guarantees
/// each of them at least one slot (M must be at least the number of backends). After that a
/// backend of weight w claims its c-th further slot in round ceil(c·W/w), W being the largest
/// weight: the heaviest backend claims once per round, the others proportionally less often,
/// all interleaved, in integer arithmetic (no floating point, so no platform can disagree).
/// With equal weights this is the paper's round robin. Weight 0 claims nothing.
/// </para>
/// </summary>
public static class MaglevTable
{
    /// <summary>The table sizes Merlin uses: primes, roughly doubling (65,537 rather than the kernel's 65,521).</summary>
    public static IReadOnlyList<int> Sizes { get; } =
        [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071, 262139, 524287, 1048573];

    /// <summary>Slots per backend the default size guarantees (M ≥ 100·N keeps the imbalance near 1%).</summary>
    public const int SlotsPerBackend = 100;

    /// <summary>The largest table size an override may ask for.</summary>
    public const int MaxSize = 1 << 24;

    // SipHash-2-4 keys for the two preference-list hashes. Part of the wire contract: frozen.
    internal const ulong OffsetKey0 = 0x4d65726c696e2d4fUL, OffsetKey1 = 0x66667365742d7631UL;
    internal const ulong SkipKey0 = 0x4d65726c696e2d53UL, SkipKey1 = 0x6b69702d2d2d7631UL;

    /// <summary>The smallest size in <see cref="Sizes"/> with at least 100 slots per backend (the largest if none is big enough).</summary>
    public static int ChooseSize(int backendCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(backendCount);
        long want = (long)backendCount * SlotsPerBackend;
        foreach (var p in Sizes)
            if (p >= want) return p;
        var largest = Sizes[^1];
        if (largest < backendCount) throw new ArgumentOutOfRangeException(nameof(backendCount), $"{backendCount} backends do not fit a table of {largest} slots");
        return largest;
    }

    /// <summary>
    /// Size for a changed server set when the table already has <paramref name="currentSize"/>
    /// slots: keep it while it still gives 100 slots per backend (a new M moves almost every flow,
    /// so a table never shrinks by itself), otherwise grow to <see cref="ChooseSize"/>.
    /// </summary>
    public static int KeepOrGrowSize(int backendCount, int currentSize)
    {
        if (ValidateSize(currentSize, backendCount) is null && currentSize >= (long)backendCount * SlotsPerBackend)
            return currentSize;
        return Math.Max(ChooseSize(backendCount), ValidateSize(currentSize, backendCount) is null ? currentSize : 0);
    }

    /// <summary>The size to use: the per-service override if given (validated), else <see cref="ChooseSize"/>.</summary>
    public static int ResolveSize(int backendCount, int? overrideSize)
    {
        if (overrideSize is not int size) return ChooseSize(backendCount);
        if (ValidateSize(size, backendCount) is { } error) throw new ArgumentOutOfRangeException(nameof(overrideSize), error);
        return size;
    }

    /// <summary>Null if <paramref name="size"/> can hold a table for that many backends, else why not.</summary>
    public static string? ValidateSize(int size, int backendCount)
    {
        if (size < 2 || size > MaxSize) return $"table size {size} is outside 2 to {MaxSize}";
        if (!IsPrime(size)) return $"table size {size} is not prime (a skip must be coprime to it; try {NextPrime(size)})";
        if (size < backendCount) return $"table size {size} is smaller than the {backendCount} backends it must hold";
        return null;
    }

    /// <summary>
    /// Builds the table: entry i is the index, in <paramref name="backends"/>, of the backend that
    /// owns slot i, or -1 when no backend has weight. Ids must be distinct.
    /// </summary>
    public static int[] Build(IReadOnlyList<(string Id, uint Weight)> backends, int? size = null)
    {
        ArgumentNullException.ThrowIfNull(backends);
        // Sized by every configured backend, drained ones included: a drain must not change M,
        // or every flow would move.
        var table = new int[ResolveSize(backends.Count, size)];
        Build(backends, table);
        return table;
    }

    /// <summary>As <see cref="Build(IReadOnlyList{ValueTuple{string, uint}}, int?)"/>, into a caller's buffer whose length is the (prime) table size.</summary>
    public static void Build(IReadOnlyList<(string Id, uint Weight)> backends, Span<int> table)
    {
        ArgumentNullException.ThrowIfNull(backends);
        int n = backends.Count;
        var ids = new string[n];
        var order = new int[n];
        for (int i = 0; i < n; i++)
        {
            ids[i] = backends[i].Id ?? throw new ArgumentException($"backend {i} has no id", nameof(backends));
            order[i] = i;
        }
        Array.Sort(ids, order, StringComparer.Ordinal);
        for (int i = 1; i < n; i++)
            if (string.Equals(ids[i - 1], ids[i], StringComparison.Ordinal))
                throw new ArgumentException($"backend \"{ids[i]}\" appears twice; a table is built from a set", nameof(backends));

        int active = 0;
        for (int i = 0; i < n; i++) if (backends[order[i]].Weight > 0) active++;
        if (ValidateSize(table.Length, active) is { } error) throw new ArgumentException(error, nameof(table));

        var offsets = new int[active];
        var skips = new int[active];
        var weights = new uint[active];
        var labels = new int[active];
        int m = table.Length;
        for (int i = 0, a = 0; i < n; i++)
        {
            var (id, weight) = backends[order[i]];
            if (weight == 0) continue;
            var (h1, h2) = IdentityHashes(id);
            offsets[a] = (int)(h1 % (ulong)m);
            skips[a] = (int)(h2 % (ulong)(m - 1)) + 1;
            weights[a] = weight;
            labels[a] = order[i];
            a++;
        }
        Fill(offsets, skips, weights, labels, table);
    }

    /// <summary>The two independent 64-bit hashes of a backend identity (SipHash-2-4 of its UTF-8 bytes under two fixed keys).</summary>
    public static (ulong OffsetHash, ulong SkipHash) IdentityHashes(string id)
    {
        ArgumentNullException.ThrowIfNull(id);
        int max = Encoding.UTF8.GetMaxByteCount(id.Length);
        byte[]? rented = max > 256 ? ArrayPool<byte>.Shared.Rent(max) : null;
        Span<byte> buffer = rented ?? stackalloc byte[256];
        try
        {
            var bytes = buffer[..Encoding.UTF8.GetBytes(id, buffer)];
            return (SipHash.Hash24(OffsetKey0, OffsetKey1, bytes), SipHash.Hash24(SkipKey0, SkipKey1, bytes));
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// The fill loop. Entries are in canonical order and all have weight &gt; 0; slot values written
    /// are <paramref name="labels"/>. <paramref name="forceWeighted"/> runs the weighted scheduler
    /// even for equal weights (tests show both paths agree).
    /// </summary>
    internal static void Fill(ReadOnlySpan<int> offsets, ReadOnlySpan<int> skips, ReadOnlySpan<uint> weights,
        ReadOnlySpan<int> labels, Span<int> table, bool forceWeighted = false)
    {
        table.Fill(-1);
        int k = offsets.Length;
        int m = table.Length;
        if (k == 0) return;
        if (k > m) throw new ArgumentException($"{k} backends do not fit a table of {m} slots");
        if (skips.Length != k || weights.Length != k || labels.Length != k) throw new ArgumentException("one offset, skip, weight and label per backend");
        for (int i = 0; i < k; i++)
        {
            // Claim indexes the bitmap without bounds checks: these ranges are what keep it inside.
            if ((uint)offsets[i] >= (uint)m || skips[i] < 1 || skips[i] >= m)
                throw new ArgumentOutOfRangeException(nameof(offsets), $"backend {i}: offset {offsets[i]} / skip {skips[i]} outside a table of {m}");
        }

        int[] nextRented = ArrayPool<int>.Shared.Rent(k);
        var next = nextRented.AsSpan(0, k);
        offsets.CopyTo(next);
        // The probe loop tests a bitmap of taken slots, not the table: 8 KB for 65,537 slots stays
        // in L1, where the 256 KB table would not (most of the build is probing).
        int words = (m + 63) >> 6;
        ulong[]? takenRented = words > 2048 ? ArrayPool<ulong>.Shared.Rent(words) : null;
        Span<ulong> taken = takenRented is null ? stackalloc ulong[words] : takenRented.AsSpan(0, words);
        taken.Clear();
        try
        {
            uint maxWeight = 0;
            ulong totalWeight = 0;
            bool equal = true;
            for (int i = 0; i < k; i++)
            {
                uint w = weights[i];
                if (w == 0) throw new ArgumentException("the fill loop takes only backends with weight > 0");
                if (i > 0 && w != weights[0]) equal = false;
                if (w > maxWeight) maxWeight = w;
                totalWeight += w;
            }

            int filled = 0;
            if (equal && !forceWeighted)
            {
                while (true)
                {
                    for (int i = 0; i < k; i++)
                    {
                        Claim(table, taken, next, skips, labels, i);
                        if (++filled == m) return;
                    }
                }
            }
            FillWeighted(table, taken, next, skips, weights, labels, maxWeight, totalWeight);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(nextRented);
            if (takenRented is not null) ArrayPool<ulong>.Shared.Return(takenRented);
        }
    }

    private static void FillWeighted(Span<int> table, Span<ulong> taken, Span<int> next, ReadOnlySpan<int> skips, ReadOnlySpan<uint> weights,
        ReadOnlySpan<int> labels, uint maxWeight, ulong totalWeight)
    {
        int k = next.Length;
        int m = table.Length;
        // After round r every backend has claimed 1 + floor(r·w/W) slots, so r = ceil(M·W/Σw) rounds fill the table.
        int rounds = (int)(((ulong)m * maxWeight + totalWeight - 1) / totalWeight);

        int[] headsRented = ArrayPool<int>.Shared.Rent(rounds + 1);
        int[] tailsRented = ArrayPool<int>.Shared.Rent(rounds + 1);
        int[] linkRented = ArrayPool<int>.Shared.Rent(k);
        long[] roundRented = ArrayPool<long>.Shared.Rent(k);
        long[] slackRented = ArrayPool<long>.Shared.Rent(k);
        long[] quotRented = ArrayPool<long>.Shared.Rent(k);
        long[] remRented = ArrayPool<long>.Shared.Rent(k);
        try
        {
            var heads = headsRented.AsSpan(0, rounds + 1);
            var tails = tailsRented.AsSpan(0, rounds + 1);
            var link = linkRented.AsSpan(0, k);
            // Backend i's c-th further claim falls in round r_c = ceil(c·W/w). Kept without division
            // as r_c·w − c·W = slack ∈ [0, w): each step adds W = q·w + rem.
            var round = roundRented.AsSpan(0, k);
            var slack = slackRented.AsSpan(0, k);
            var quot = quotRented.AsSpan(0, k);
            var rem = remRented.AsSpan(0, k);
            round.Clear();
            slack.Clear();
            for (int i = 0; i < k; i++)
            {
                quot[i] = maxWeight / weights[i];
                rem[i] = maxWeight - quot[i] * weights[i];
            }
            heads.Fill(-1);

            int filled = 0;
            // Round 0: everyone claims once, in canonical order; then queue each for its next round.
            for (int i = 0; i < k; i++)
            {
                Claim(table, taken, next, skips, labels, i);
                if (++filled == m) return;
                Enqueue(heads, tails, link, Advance(round, slack, quot[i], rem[i], weights[i], i), i);
            }
            for (int r = 1; r <= rounds; r++)
            {
                for (int i = heads[r]; i >= 0;)
                {
                    int after = link[i];
                    Claim(table, taken, next, skips, labels, i);
                    if (++filled == m) return;
                    Enqueue(heads, tails, link, Advance(round, slack, quot[i], rem[i], weights[i], i), i);
                    i = after;
                }
            }
            throw new InvalidOperationException($"Maglev fill stopped at {filled} of {m} slots");
        }
        finally
        {
            ArrayPool<int>.Shared.Return(headsRented);
            ArrayPool<int>.Shared.Return(tailsRented);
            ArrayPool<int>.Shared.Return(linkRented);
            ArrayPool<long>.Shared.Return(roundRented);
            ArrayPool<long>.Shared.Return(slackRented);
            ArrayPool<long>.Shared.Return(quotRented);
            ArrayPool<long>.Shared.Return(remRented);
        }
    }

    // From round r_c = ceil(c·W/w) to r_{c+1}, with W = quot·w + rem: (c+1)·W = (r_c + quot)·w + (rem − slack).
    // Always a later round, since w ≤ W.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Advance(Span<long> round, Span<long> slack, long quot, long rem, uint weight, int i)
    {
        long r = round[i] + quot, d = rem - slack[i];
        if (d > 0) { r++; slack[i] = weight - d; }
        else slack[i] = -d;
        round[i] = r;
        return r;
    }

    private static void Enqueue(Span<int> heads, Span<int> tails, Span<int> link, long round, int i)
    {
        if (round >= heads.Length) return;   // beyond the last round needed
        int r = (int)round;
        link[i] = -1;
        if (heads[r] < 0) heads[r] = i;
        else link[tails[r]] = i;
        tails[r] = i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Claim(Span<int> table, Span<ulong> taken, Span<int> next, ReadOnlySpan<int> skips, ReadOnlySpan<int> labels, int i)
    {
        int m = table.Length;
        int c = next[i];
        int s = skips[i];
        int sm = s - m;
        ref ulong bits = ref MemoryMarshal.GetReference(taken);
        // c and s are always in [0, m): every probe stays inside the bitmap, so no bounds checks.
        // The wrap is arithmetic: it happens about half the time, so a branch would mispredict
        // (and the JIT turns neither a ternary nor Math.Min into a cmov here).
        while ((Unsafe.Add(ref bits, c >> 6) & (1UL << c)) != 0)   // a ulong shift uses the low 6 bits of c
        {
            c += sm;
            c += m & (c >> 31);
        }
        Unsafe.Add(ref bits, c >> 6) |= 1UL << c;
        table[c] = labels[i];
        c += sm;
        next[i] = c + (m & (c >> 31));
    }

    internal static bool IsPrime(int n)
    {
        if (n < 2) return false;
        if (n % 2 == 0) return n == 2;
        for (int d = 3; (long)d * d <= n; d += 2)
            if (n % d == 0) return false;
        return true;
    }

    private static int NextPrime(int n)
    {
        int p = Math.Max(n, 2);
        while (!IsPrime(p)) p++;
        return p;
    }
}
