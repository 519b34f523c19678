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
/// and within a round backends go in sorted order. All integer arithmetic (no floating point, so
/// no platform can disagree); scaling every weight by the same factor changes nothing. With
/// equal weights this is the paper's round robin. Weight 0 claims nothing.
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
        int m = table.Length;
        // Who claims the 1st, 2nd, … M-th slot depends only on the weights, so that order is worked
        // out first and the probing loop below stays as lean as the equal-weight one.
        int[] orderRented = ArrayPool<int>.Shared.Rent(m);
        try
        {
            var order = orderRented.AsSpan(0, m);
            WeightedOrder(weights, maxWeight, totalWeight, order);
            foreach (int i in order) Claim(table, taken, next, skips, labels, i);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(orderRented);
        }
    }

    /// <summary>
    /// The first <c>order.Length</c> claims of the weighted schedule: round 0 is every backend; in
    /// round r ≥ 1 backend i claims when floor(r·w_i/W) grows (its c-th further claim falls in round
    /// ceil(c·W/w_i)); within a round, backends claim in canonical order. Two ways to the same
    /// sequence: a scan of every backend per round, cheap while rounds·N is small, and a heap keyed
    /// by (round, index) for very uneven weights, where most backends sit out most rounds.
    /// </summary>
    internal static void WeightedOrder(ReadOnlySpan<uint> weights, uint maxWeight, ulong totalWeight, Span<int> order, bool? scan = null)
    {
        int k = weights.Length;
        int m = order.Length;
        int n = 0;
        for (int i = 0; i < k; i++)
        {
            order[n] = i;
            if (++n == m) return;
        }
        // After round r every backend has claimed 1 + floor(r·w/W) slots, so r = ceil(M·W/Σw) rounds suffice.
        long rounds = (long)(((ulong)m * maxWeight + totalWeight - 1) / totalWeight);
        if (scan ?? rounds * k <= 32L * m) ScanOrder(weights, maxWeight, order, n);
        else HeapOrder(weights, maxWeight, order, n);
    }

    private static void ScanOrder(ReadOnlySpan<uint> weights, long maxWeight, Span<int> order, int n)
    {
        int k = weights.Length;
        int m = order.Length;
        long[] creditRented = ArrayPool<long>.Shared.Rent(k);
        try
        {
            // credit_i = r·w_i mod W: a claim each time it passes W. Branch-free, since whether a
            // backend claims in a given round is as good as random.
            var credit = creditRented.AsSpan(0, k);
            credit.Clear();
            while (true)
            {
                for (int i = 0; i < k; i++)
                {
                    long c = credit[i] + weights[i];
                    long claims = (long)((ulong)(maxWeight - 1 - c) >> 63);   // 1 when c ≥ W
                    credit[i] = c - (maxWeight & -claims);
                    order[n] = i;
                    n += (int)claims;
                    if (n == m) return;
                }
            }
        }
        finally
        {
            ArrayPool<long>.Shared.Return(creditRented);
        }
    }

    private static void HeapOrder(ReadOnlySpan<uint> weights, long maxWeight, Span<int> order, int n)
    {
        int k = weights.Length;
        int m = order.Length;
        long[] roundRented = ArrayPool<long>.Shared.Rent(k);
        int[] claimsRented = ArrayPool<int>.Shared.Rent(k);
        int[] heapRented = ArrayPool<int>.Shared.Rent(k);
        try
        {
            var round = roundRented.AsSpan(0, k);     // round of backend i's next claim
            var claims = claimsRented.AsSpan(0, k);   // further claims made so far
            var heap = heapRented.AsSpan(0, k);       // backend indices, min-heap on (round, index)
            for (int i = 0; i < k; i++)
            {
                claims[i] = 0;
                round[i] = NextRound(0, maxWeight, weights[i]);
                heap[i] = i;
            }
            for (int i = k / 2 - 1; i >= 0; i--) SiftDown(heap, round, i);
            while (true)
            {
                int top = heap[0];
                order[n] = top;
                if (++n == m) return;
                round[top] = NextRound(++claims[top], maxWeight, weights[top]);
                SiftDown(heap, round, 0);
            }
        }
        finally
        {
            ArrayPool<long>.Shared.Return(roundRented);
            ArrayPool<int>.Shared.Return(claimsRented);
            ArrayPool<int>.Shared.Return(heapRented);
        }
    }

    // The round of a backend's (c+1)-th claim after round 0: ceil((c+1)·W/w).
    private static long NextRound(int c, long maxWeight, uint weight) => ((c + 1L) * maxWeight + weight - 1) / weight;

    private static void SiftDown(Span<int> heap, Span<long> round, int at)
    {
        int item = heap[at];
        while (true)
        {
            int child = 2 * at + 1;
            if (child >= heap.Length) break;
            if (child + 1 < heap.Length && Before(heap[child + 1], heap[child], round)) child++;
            if (!Before(heap[child], item, round)) break;
            heap[at] = heap[child];
            at = child;
        }
        heap[at] = item;
    }

    private static bool Before(int a, int b, Span<long> round) => round[a] < round[b] || (round[a] == round[b] && a < b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Claim(Span<int> table, Span<ulong> taken, Span<int> next, ReadOnlySpan<int> skips, ReadOnlySpan<int> labels, int i)
    {
        int m = table.Length;
        int c = next[i];
        ref ulong bits = ref MemoryMarshal.GetReference(taken);
        // c and s are always in [0, m): every probe stays inside the bitmap, so no bounds checks.
        if (IsTaken(ref bits, c))
        {
            // Most of a build is this loop (about M·ln M probes in all). Two interleaved walks with
            // step 2s, one from c and one from c + s, visit the same slots in the same order with
            // two independent dependency chains.
            int s = skips[i];
            int s2 = s + s - m;
            s2 += m & (s2 >> 31);         // 2s mod m
            int d = Wrap(c + s - m, m);
            while (true)
            {
                if (!IsTaken(ref bits, d)) { c = d; break; }
                c = Wrap(c + s2 - m, m);
                if (!IsTaken(ref bits, c)) break;
                d = Wrap(d + s2 - m, m);
            }
        }
        Unsafe.Add(ref bits, c >> 6) |= 1UL << c;
        table[c] = labels[i];
        next[i] = Wrap(c + skips[i] - m, m);
    }

    // A ulong shift uses the low 6 bits of the count: 1UL << c is the bit of slot c in its word.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsTaken(ref ulong bits, int c) => (Unsafe.Add(ref bits, c >> 6) & (1UL << c)) != 0;

    // x − m → x mod m for x − m in [−m, m): arithmetic, since the wrap happens about half the
    // time and a branch would mispredict (the JIT makes no cmov of a ternary here).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Wrap(int xMinusM, int m) => xMinusM + (m & (xMinusM >> 31));

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
