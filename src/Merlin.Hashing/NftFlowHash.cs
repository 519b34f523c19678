namespace Merlin.Hashing;

/// <summary>
/// Which slot of a lookup table the nftables dataplane sends a flow to:
/// <c>jhash ip saddr . th sport mod M seed S</c> (or saddr only) evaluates
/// <c>reciprocal_scale(jhash(key, len, S), M)</c> in the kernel (net/netfilter/nft_hash.c).
/// Every node that uses the same seed and table picks the same slot, which is what lets a
/// flow survive a failover with no state shared.
/// </summary>
public static class NftFlowHash
{
    public static uint Hash(in FlowKey flow, uint seed, bool includePort)
    {
        Span<byte> key = stackalloc byte[20];
        int len = flow.WriteNftKey(key, includePort);
        return Jhash.Hash(key[..len], seed);
    }

    public static int Slot(in FlowKey flow, uint seed, int modulus, bool includePort = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(modulus, 2);
        return (int)Jhash.ReciprocalScale(Hash(flow, seed, includePort), (uint)modulus);
    }
}
