using System.Buffers.Binary;
using System.Numerics;

namespace Merlin.Hashing;

/// <summary>
/// The kernel's <c>jhash</c> (include/linux/jhash.h: Bob Jenkins' lookup3 as adapted by Jozsef
/// Kadlecsik), as nftables' <c>jhash … mod M seed S</c> expression evaluates it on a
/// little-endian machine, and <c>reciprocal_scale</c>, which turns the 32-bit hash into
/// <c>0 … M-1</c> (it is a multiply-and-shift, not a remainder).
/// </summary>
public static class Jhash
{
    public const uint InitVal = 0xdeadbeef;

    public static uint Hash(ReadOnlySpan<byte> key, uint initval)
    {
        uint length = (uint)key.Length;
        uint a, b, c;
        a = b = c = InitVal + length + initval;

        while (key.Length > 12)
        {
            a += BinaryPrimitives.ReadUInt32LittleEndian(key);
            b += BinaryPrimitives.ReadUInt32LittleEndian(key[4..]);
            c += BinaryPrimitives.ReadUInt32LittleEndian(key[8..]);
            Mix(ref a, ref b, ref c);
            key = key[12..];
        }

        if (key.Length == 0) return c;   // nothing left: the kernel returns c unmixed

        // Up to 12 bytes: byte i adds into word i/4 at bit 8*(i%4).
        for (int i = 0; i < key.Length; i++)
        {
            uint v = (uint)key[i] << (8 * (i & 3));
            switch (i >> 2)
            {
                case 0: a += v; break;
                case 1: b += v; break;
                default: c += v; break;
            }
        }
        Final(ref a, ref b, ref c);
        return c;
    }

    /// <summary>The kernel's <c>reciprocal_scale(val, range)</c>: <c>(u32)(((u64)val * range) >> 32)</c>.</summary>
    public static uint ReciprocalScale(uint value, uint range) => (uint)(((ulong)value * range) >> 32);

    private static void Mix(ref uint a, ref uint b, ref uint c)
    {
        a -= c; a ^= BitOperations.RotateLeft(c, 4); c += b;
        b -= a; b ^= BitOperations.RotateLeft(a, 6); a += c;
        c -= b; c ^= BitOperations.RotateLeft(b, 8); b += a;
        a -= c; a ^= BitOperations.RotateLeft(c, 16); c += b;
        b -= a; b ^= BitOperations.RotateLeft(a, 19); a += c;
        c -= b; c ^= BitOperations.RotateLeft(b, 4); b += a;
    }

    private static void Final(ref uint a, ref uint b, ref uint c)
    {
        c ^= b; c -= BitOperations.RotateLeft(b, 14);
        a ^= c; a -= BitOperations.RotateLeft(c, 11);
        b ^= a; b -= BitOperations.RotateLeft(a, 25);
        c ^= b; c -= BitOperations.RotateLeft(b, 16);
        a ^= c; a -= BitOperations.RotateLeft(c, 4);
        b ^= a; b -= BitOperations.RotateLeft(a, 14);
        c ^= b; c -= BitOperations.RotateLeft(b, 24);
    }
}
