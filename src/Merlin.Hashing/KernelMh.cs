using System.Numerics;

namespace Merlin.Hashing;

/// <summary>
/// An exact model of the kernel's Maglev-hashing scheduler (net/netfilter/ipvs/ip_vs_mh.c, Linux
/// 4.18+) as built for 64-bit machines.
/// <list type="bullet">
/// <item>Table size: <c>primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]</c> from 251, 509, 1021, 2039, 4093,
/// 8191, 16381, 32749, 65521, 131071. Kconfig's default index is 12, so a stock kernel uses
/// <b>4093</b> slots (251 needs index 8).</item>
/// <item>Permutation: offset = hsiphash(v) mod M and skip = hsiphash'(v) mod (M-1) + 1, where
/// v = ntohs(port) + ntohl(addr) as a u32, hashed as its 4 bytes with the fixed keys
/// {2654435761, 2654435761} and {2654446892, 2654446892} (hsiphash is SipHash-1-3 truncated to 32
/// bits on 64-bit kernels).</item>
/// <item>Weights: turns = (last_weight / gcd) &gt;&gt; rshift, at least 1 when last_weight ≠ 0, with gcd
/// over the positive last weights and rshift = max(0, fls(max / gcd) - index/2). Each destination
/// claims <c>turns</c> consecutive slots per round. Because it is last_weight, a drained server
/// (weight 0) keeps its slots; new flows that hash there find it unavailable.</item>
/// <item>Lookup: slot = hsiphash(offset + port + addr) mod M with the first key; with mh-fallback an
/// unavailable destination sends the flow on through offsets ihash, ihash+1, … (mod M).</item>
/// </list>
/// <para>
/// <b>The table depends on the order destinations were added</b>, not only on the set: the fill is a
/// round robin over the service's list, new destinations go to the head of that list, and ties
/// for a slot go to whoever comes first. Two nodes that added the same servers in different
/// orders (say, after a restart that re-read the store in another order) build different tables
/// and send some flows to different servers. Merlin's own <see cref="MaglevTable"/> sorts first.
/// </para>
/// </summary>
public sealed class KernelMh
{
    /// <summary>The kernel's table sizes, indexed by CONFIG_IP_VS_MH_TAB_INDEX - 8.</summary>
    public static IReadOnlyList<int> Primes { get; } = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];

    /// <summary>Kconfig's default CONFIG_IP_VS_MH_TAB_INDEX (the source's fallback is the same).</summary>
    public const int DefaultTabIndex = 12;

    public const ulong Key1 = 2654435761;   // generate_hash_secret: hash1.key[0] = key[1]
    public const ulong Key2 = 2654446892;   // hash2.key[0] = key[1]

    private readonly int[] _lookup;

    private KernelMh(int tabIndex, IReadOnlyList<IpvsDest> dests, int[] lookup)
    {
        TabIndex = tabIndex;
        Dests = dests;
        _lookup = lookup;
    }

    public int TabIndex { get; }
    public int TableSize => _lookup.Length;

    /// <summary>The destinations in the order they were added; slot values index this list.</summary>
    public IReadOnlyList<IpvsDest> Dests { get; }

    /// <summary>Slot → index into <see cref="Dests"/>, or -1 (no destination has weight).</summary>
    public ReadOnlySpan<int> Lookup => _lookup;

    public static int TableSizeFor(int tabIndex)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tabIndex, 8);      // Kconfig range 8..17
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tabIndex, 17);
        return Primes[tabIndex - 8];
    }

    public static KernelMh Build(IReadOnlyList<IpvsDest> destsInAddOrder, int tabIndex = DefaultTabIndex)
    {
        ArgumentNullException.ThrowIfNull(destsInAddOrder);
        int size = TableSizeFor(tabIndex);
        var dests = destsInAddOrder.ToArray();
        int n = dests.Length;
        if (n > size) throw new ArgumentException($"mh rejects more destinations ({n}) than table slots ({size}) with EINVAL", nameof(destsInAddOrder));

        // Kernel list order: newest first.
        var lastWeights = new int[n];
        var offsets = new int[n];
        var skips = new int[n];
        for (int p = 0; p < n; p++)
        {
            var d = dests[n - 1 - p];
            lastWeights[p] = d.LastWeight;
            (offsets[p], skips[p]) = Permutation(d.FoldedAddress, d.Port, size);
        }
        var turns = Turns(lastWeights, tabIndex / 2);
        var positions = new int[size];
        Populate(offsets, skips, turns, positions);
        var lookup = new int[size];
        for (int i = 0; i < size; i++) lookup[i] = positions[i] < 0 ? -1 : n - 1 - positions[i];
        return new KernelMh(tabIndex, dests, lookup);
    }

    /// <summary>ip_vs_mh_hashkey: hsiphash of (offset + port + address) as a u32.</summary>
    public static uint HashKey(uint foldedAddress, ushort port, uint offset, ulong key) =>
        SipHash.KernelHsipHash(key, key, offset + port + foldedAddress);

    /// <summary>ip_vs_mh_permutate: a destination's offset and skip in a table of <paramref name="size"/> slots.</summary>
    public static (int Offset, int Skip) Permutation(uint foldedAddress, ushort port, int size) =>
        ((int)(HashKey(foldedAddress, port, 0, Key1) % (uint)size),
         (int)(HashKey(foldedAddress, port, 0, Key2) % (uint)(size - 1)) + 1);

    /// <summary>
    /// ip_vs_mh_gcd_weight + ip_vs_mh_shift_weight + the turns of ip_vs_mh_permutate, for last
    /// weights in list order. <paramref name="tabBits"/> is CONFIG_IP_VS_MH_TAB_INDEX / 2.
    /// </summary>
    public static int[] Turns(ReadOnlySpan<int> lastWeights, int tabBits)
    {
        int gcd = 0, max = 0;
        foreach (var w in lastWeights)
        {
            if (w > 0) gcd = gcd > 0 ? Gcd(w, gcd) : w;
            if (w > max) max = w;
        }
        var turns = new int[lastWeights.Length];
        if (gcd < 1) return turns;
        int fls = 32 - BitOperations.LeadingZeroCount((uint)(max / gcd));
        int shift = Math.Max(0, fls - tabBits);
        for (int i = 0; i < turns.Length; i++)
        {
            int lw = lastWeights[i];
            int t = (lw / gcd) >> shift;
            turns[i] = t != 0 ? t : (lw != 0 ? 1 : 0);
        }
        return turns;
    }

    /// <summary>
    /// ip_vs_mh_populate on plain arrays in list order: fills <paramref name="table"/> with list
    /// positions (-1 everywhere when no turns). Round robin over the list; each destination with
    /// turns ≥ 1 takes that many slots per round, each the next free slot of its permutation.
    /// </summary>
    public static void Populate(ReadOnlySpan<int> offsets, ReadOnlySpan<int> skips, ReadOnlySpan<int> turns, Span<int> table)
    {
        table.Fill(-1);
        int n = offsets.Length, size = table.Length;
        bool any = false;
        foreach (var t in turns) any |= t > 0;
        if (n == 0 || !any) return;

        Span<int> perm = n <= 256 ? stackalloc int[n] : new int[n];
        offsets.CopyTo(perm);
        int filled = 0;
        while (true)
        {
            for (int p = 0; p < n; p++)
            {
                for (int t = 0; t < turns[p]; t++)
                {
                    int c = perm[p];
                    while (table[c] >= 0)
                    {
                        c += skips[p];
                        if (c >= size) c -= size;
                    }
                    perm[p] = c;
                    table[c] = p;
                    if (++filled == size) return;
                }
            }
        }
    }

    /// <summary>
    /// ip_vs_mh_schedule: destination index for a new connection, or -1. <paramref name="hashPort"/>
    /// is mh-port (otherwise port 0), <paramref name="fallback"/> is mh-fallback.
    /// </summary>
    public int Schedule(in FlowKey flow, bool hashPort, bool fallback)
    {
        uint addr = flow.KernelFold;
        ushort port = hashPort ? flow.Port : (ushort)0;
        uint size = (uint)_lookup.Length;
        uint ihash = HashKey(addr, port, 0, Key1) % size;
        int dest = _lookup[ihash];
        if (dest < 0) return -1;
        if (!Dests[dest].IsUnavailable) return dest;
        if (!fallback) return -1;
        for (uint offset = 0; offset < size; offset++)
        {
            uint roffset = (offset + ihash) % size;
            dest = _lookup[HashKey(addr, port, roffset, Key1) % size];
            if (dest < 0) break;
            if (!Dests[dest].IsUnavailable) return dest;
        }
        return -1;
    }

    private static int Gcd(int a, int b)
    {
        while (b != 0) (a, b) = (b, a % b);
        return a;
    }
}
