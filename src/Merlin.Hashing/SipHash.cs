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
    public static ulong Hash24(ulong k0, ulong k1, ReadOnlySpan<byte> data)
    {
        var st = new State(k0, k1);
        int blocks = data.Length & ~7;
        for (int i = 0; i < blocks; i += 8)
        {
            ulong m = BinaryPrimitives.ReadUInt64LittleEndian(data.Slice(i, 8));
            st.V3 ^= m;
            st.Round();
            st.Round();
            st.V0 ^= m;
        }
        ulong b = LastWord(data, blocks);
        st.V3 ^= b;
        st.Round();
        st.Round();
        st.V0 ^= b;
        st.V2 ^= 0xff;
        st.Round();
        st.Round();
        st.Round();
        st.Round();
        return st.V0 ^ st.V1 ^ st.V2 ^ st.V3;
    }

    /// <summary>SipHash-1-3, the faster variant the kernel uses for hash tables.</summary>
    public static ulong Hash13(ulong k0, ulong k1, ReadOnlySpan<byte> data)
    {
        var st = new State(k0, k1);
        int blocks = data.Length & ~7;
        for (int i = 0; i < blocks; i += 8)
        {
            ulong m = BinaryPrimitives.ReadUInt64LittleEndian(data.Slice(i, 8));
            st.V3 ^= m;
            st.Round();
            st.V0 ^= m;
        }
        ulong b = LastWord(data, blocks);
        st.V3 ^= b;
        st.Round();
        st.V0 ^= b;
        st.V2 ^= 0xff;
        st.Round();
        st.Round();
        st.Round();
        return st.V0 ^ st.V1 ^ st.V2 ^ st.V3;
    }

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
        var st = new State(k0, k1);
        ulong b = (4UL << 56) | value;
        st.V3 ^= b;
        st.Round();
        st.V0 ^= b;
        st.V2 ^= 0xff;
        st.Round();
        st.Round();
        st.Round();
        return (uint)(st.V0 ^ st.V1 ^ st.V2 ^ st.V3);
    }

    // The remaining 0–7 bytes, little-endian, with the length (mod 256) in the top byte.
    private static ulong LastWord(ReadOnlySpan<byte> data, int blocks)
    {
        ulong b = (ulong)data.Length << 56;
        var tail = data[blocks..];
        for (int i = 0; i < tail.Length; i++) b |= (ulong)tail[i] << (8 * i);
        return b;
    }

    private struct State(ulong k0, ulong k1)
    {
        public ulong V0 = 0x736f6d6570736575UL ^ k0;
        public ulong V1 = 0x646f72616e646f6dUL ^ k1;
        public ulong V2 = 0x6c7967656e657261UL ^ k0;
        public ulong V3 = 0x7465646279746573UL ^ k1;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Round()
        {
            V0 += V1; V1 = BitOperations.RotateLeft(V1, 13); V1 ^= V0; V0 = BitOperations.RotateLeft(V0, 32);
            V2 += V3; V3 = BitOperations.RotateLeft(V3, 16); V3 ^= V2;
            V0 += V3; V3 = BitOperations.RotateLeft(V3, 21); V3 ^= V0;
            V2 += V1; V1 = BitOperations.RotateLeft(V1, 17); V1 ^= V2; V2 = BitOperations.RotateLeft(V2, 32);
        }
    }
}
