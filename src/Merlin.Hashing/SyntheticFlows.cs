namespace Merlin.Hashing;

/// <summary>Shapes of synthetic client populations.</summary>
public enum FlowPattern
{
    /// <summary>Uniformly random client addresses and ephemeral ports (1024–65535).</summary>
    Random,

    /// <summary>16 client addresses (say, NAT gateways) with random ephemeral ports.</summary>
    FewClients,

    /// <summary>
    /// Addresses 10.0.0.1, 10.0.1.1, 10.0.2.1, … and one port: every key agrees in its low byte,
    /// the worst case for the 4.x sh hash (all flows land in one bucket).
    /// </summary>
    SameLowByte,
}

/// <summary>Deterministic synthetic flows: the same count, seed and pattern give the same flows on every machine.</summary>
public static class SyntheticFlows
{
    public static FlowKey[] Generate(int count, ulong seed, FlowPattern pattern = FlowPattern.Random)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var rng = new SplitMix64(seed);
        var flows = new FlowKey[count];
        Span<uint> gateways = stackalloc uint[16];
        for (int i = 0; i < gateways.Length; i++) gateways[i] = (uint)rng.Next();
        for (int i = 0; i < count; i++)
        {
            ulong r = rng.Next();
            flows[i] = pattern switch
            {
                FlowPattern.Random => FlowKey.V4((uint)r, EphemeralPort(r >> 32)),
                FlowPattern.FewClients => FlowKey.V4(gateways[(int)(r & 15)], EphemeralPort(r >> 32)),
                FlowPattern.SameLowByte => FlowKey.V4(0x0A000001u + ((uint)i << 8), 40000),
                _ => throw new ArgumentOutOfRangeException(nameof(pattern)),
            };
        }
        return flows;
    }

    private static ushort EphemeralPort(ulong r) => (ushort)(1024 + r % (65536 - 1024));

    /// <summary>SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fully specified, unlike System.Random's seeding.</summary>
    internal struct SplitMix64(ulong seed)
    {
        private ulong _state = seed;

        public ulong Next()
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
