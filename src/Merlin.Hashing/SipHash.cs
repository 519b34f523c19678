using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace Merlin.Hashing;

/// <summary>
/// SipHash (Aumasson and Bernstein, 2012), written out by hand so that results never depend on
/// the runtime: SipHash-2-4 for Merlin's own stable hashes, SipHash-1-3 for the kernel's
/// <c>hsiphash</c>, which on 64-bit kernels is SipHash-1-3 truncated to 32 bits.
/// The key is two little-endian 64-bit words (key bytes 0..7 and 8..15).
/// </summary>
public static class SipHash
{
    /// <summary>SipHash-2-4, the reference PRF.</summary>
    public static ulong Hash24(ulong k0, ulong k1, ReadOnlySpan<byte> data) => Compute(k0, k1, data, 2, 4);

    /// <summary>SipHash-1-3, the faster variant the kernel uses for hash tables.</summary>
    public static ulong Hash13(ulong k0, ulong k1, ReadOnlySpan<byte> data) => Compute(k0, k1, data, 1, 3);

    /// <summary>
    /// The kernel's <c>hsiphash(data, len, key)</c> as built for 64-bit machines (lib/siphash.c:
    /// "on 64-bit, we make HalfSipHash1-3 actually be SipHash1-3"), including the truncation to u32.
    /// 32-bit kernels compute HalfSipHash-1-3 instead and give different values.
    /// </summary>
    public static uint KernelHsipHash(ulong k0, ulong k1, ReadOnlySpan<byte> data) => (uint)Hash13(k0, k1, data);

    /// <summary><see cref="KernelHsipHash"/> of the four bytes of a u32 as a little-endian CPU stores it.</summary>
    public static uint KernelHsipHash(ulong k0, ulong k1, uint value)
    {
        // A 4-byte message has no full block: the length byte and the message go in the last word.
        ulong v0 = 0x736f6d6570736575UL ^ k0, v1 = 0x646f72616e646f6dUL ^ k1;
        ulong v2 = 0x6c7967656e657261UL ^ k0, v3 = 0x7465646279746573UL ^ k1;
        ulong b = (4UL << 56) | value;
        v3 ^= b;
        Round(ref v0, ref v1, ref v2, ref v3);
        v0 ^= b;
        v2 ^= 0xff;
        Round(ref v0, ref v1, ref v2, ref v3);
        Round(ref v0, ref v1, ref v2, ref v3);
        Round(ref v0, ref v1, ref v2, ref v3);
        return (uint)(v0 ^ v1 ^ v2 ^ v3);
    }

    private static ulong Compute(ulong k0, ulong k1, ReadOnlySpan<byte> data, int cRounds, int dRounds)
    {
        ulong v0 = 0x736f6d6570736575UL ^ k0, v1 = 0x646f72616e646f6dUL ^ k1;
        ulong v2 = 0x6c7967656e657261UL ^ k0, v3 = 0x7465646279746573UL ^ k1;

        int blocks = data.Length & ~7;
        for (int i = 0; i < blocks; i += 8)
        {
            ulong m = BinaryPrimitives.ReadUInt64LittleEndian(data.Slice(i, 8));
            v3 ^= m;
            for (int r = 0; r < cRounds; r++) Round(ref v0, ref v1, ref v2, ref v3);
            v0 ^= m;
        }

        // Last word: the remaining bytes, little-endian, with the length (mod 256) in the top byte.
        ulong b = (ulong)data.Length << 56;
        var tail = data[blocks..];
        for (int i = 0; i < tail.Length; i++) b |= (ulong)tail[i] << (8 * i);

        v3 ^= b;
        for (int r = 0; r < cRounds; r++) Round(ref v0, ref v1, ref v2, ref v3);
        v0 ^= b;
        v2 ^= 0xff;
        for (int r = 0; r < dRounds; r++) Round(ref v0, ref v1, ref v2, ref v3);
        return v0 ^ v1 ^ v2 ^ v3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Round(ref ulong v0, ref ulong v1, ref ulong v2, ref ulong v3)
    {
        v0 += v1; v1 = BitOperations.RotateLeft(v1, 13); v1 ^= v0; v0 = BitOperations.RotateLeft(v0, 32);
        v2 += v3; v3 = BitOperations.RotateLeft(v3, 16); v3 ^= v2;
        v0 += v3; v3 = BitOperations.RotateLeft(v3, 21); v3 ^= v0;
        v2 += v1; v1 = BitOperations.RotateLeft(v1, 17); v1 ^= v2; v2 = BitOperations.RotateLeft(v2, 32);
    }
}
