namespace Merlin.Hashing;

/// <summary>Which hash the kernel's sh scheduler uses to pick a bucket.</summary>
public enum ShVariant
{
    /// <summary>
    /// 4.x kernels: <c>(offset + (ntohs(port) + ntohl(addr)) * 2654435761UL) &amp; 0xFF</c>. Only the
    /// low byte of the product survives, and the low byte of a product depends only on the low
    /// byte of the key: clients whose address + port agree in the last 8 bits all share a bucket,
    /// whatever their other 24 bits.
    /// </summary>
    Linux4x,

    /// <summary>Later kernels: <c>(offset + hash_32(ntohs(port) + ntohl(addr), 8)) &amp; 0xFF</c>, the TOP 8 bits of key · 0x61C88647.</summary>
    Hash32,
}

/// <summary>
/// An exact model of the kernel's source-hashing scheduler (net/netfilter/ipvs/ip_vs_sh.c):
/// a 2^bits-bucket table (256 by default) tiled with the destinations in the kernel's list
/// order, each taking <c>weight</c> consecutive buckets (a weight-0 destination still takes one:
/// the reassign loop moves on once <c>++count &gt;= weight</c>), repeated until the table is full.
/// <para>
/// Order matters: the kernel adds each new destination at the HEAD of the service's list
/// (<c>list_add_rcu</c> in __ip_vs_update_dest), so the table starts with the most recently
/// added server, and adding or removing one shifts the tiling of every bucket after it.
/// Methods here take destinations in the order they were added.
/// </para>
/// </summary>
public sealed class KernelSh
{
    public const int DefaultTabBits = 8;
    public const uint Linux4xMultiplier = 2654435761;   // 0x9E3779B1
    public const uint GoldenRatio32 = 0x61C88647;          // include/linux/hash.h since 4.7

    private readonly int[] _buckets;

    private KernelSh(ShVariant variant, int tabBits, IReadOnlyList<IpvsDest> dests, int[] buckets)
    {
        Variant = variant;
        TabBits = tabBits;
        Dests = dests;
        _buckets = buckets;
    }

    public ShVariant Variant { get; }
    public int TabBits { get; }
    public int TableSize => 1 << TabBits;

    /// <summary>The destinations in the order they were added; bucket values index this list.</summary>
    public IReadOnlyList<IpvsDest> Dests { get; }

    /// <summary>Bucket → index into <see cref="Dests"/>, or -1 when the service has no destination.</summary>
    public ReadOnlySpan<int> Buckets => _buckets;

    public static KernelSh Build(IReadOnlyList<IpvsDest> destsInAddOrder, ShVariant variant, int tabBits = DefaultTabBits)
    {
        ArgumentNullException.ThrowIfNull(destsInAddOrder);
        ArgumentOutOfRangeException.ThrowIfLessThan(tabBits, 4);       // CONFIG_IP_VS_SH_TAB_BITS range 4..20
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tabBits, 20);
        var dests = destsInAddOrder.ToArray();
        var buckets = new int[1 << tabBits];
        int n = dests.Length;
        if (n == 0)
        {
            Array.Fill(buckets, -1);
            return new KernelSh(variant, tabBits, dests, buckets);
        }
        // Kernel list order is newest first: list position p is add-order index n-1-p.
        int p = 0, count = 0;
        for (int i = 0; i < buckets.Length; i++)
        {
            int index = n - 1 - p;
            buckets[i] = index;
            if (++count >= dests[index].Weight)
            {
                p = (p + 1) % n;
                count = 0;
            }
        }
        return new KernelSh(variant, tabBits, dests, buckets);
    }

    /// <summary>ip_vs_sh_hashkey: the bucket for (address, port) at a fallback offset.</summary>
    public static int HashKey(ShVariant variant, uint foldedAddress, ushort port, uint offset, int tabBits = DefaultTabBits)
    {
        uint key = port + foldedAddress;               // u16 + u32 in unsigned int: wraps
        uint mask = (1u << tabBits) - 1;
        return variant switch
        {
            // The kernel multiplies in unsigned long; the masked low bits are the same in 32 bits.
            ShVariant.Linux4x => (int)((offset + key * Linux4xMultiplier) & mask),
            ShVariant.Hash32 => (int)((offset + ((key * GoldenRatio32) >> (32 - tabBits))) & mask),
            _ => throw new ArgumentOutOfRangeException(nameof(variant)),
        };
    }

    /// <summary>
    /// ip_vs_sh_schedule: the destination (index into <see cref="Dests"/>) for a new connection, or
    /// -1 when the kernel finds none. <paramref name="hashPort"/> is the sh-port flag (otherwise the
    /// port counts as 0); <paramref name="fallback"/> is sh-fallback: when the bucket's destination
    /// is unavailable, walk buckets (ihash + offset + key-hash) for offset = 0, 1, … and take the
    /// first available one.
    /// </summary>
    public int Schedule(in FlowKey flow, bool hashPort, bool fallback)
    {
        uint addr = flow.KernelFold;
        ushort port = hashPort ? flow.Port : (ushort)0;
        int ihash = HashKey(Variant, addr, port, 0, TabBits);
        int dest = _buckets[ihash];
        if (dest < 0) return -1;
        if (!Dests[dest].IsUnavailable) return dest;
        if (!fallback) return -1;
        int size = TableSize;
        for (int offset = 0; offset < size; offset++)
        {
            uint roffset = (uint)((offset + ihash) % size);
            dest = _buckets[HashKey(Variant, addr, port, roffset, TabBits)];
            if (dest < 0) break;
            if (!Dests[dest].IsUnavailable) return dest;
        }
        return -1;
    }
}
