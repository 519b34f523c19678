using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>
/// Netlink headers and most attributes are in the host's byte order (unlike the network-order ports and
/// addresses some families carry, which use <see cref="System.Buffers.Binary.BinaryPrimitives"/>' big-endian
/// calls). Callers have already checked the span's length.
/// </summary>
internal static class HostOrder
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(Span<byte> destination, ushort value) => MemoryMarshal.Write(destination, in value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(Span<byte> destination, uint value) => MemoryMarshal.Write(destination, in value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(Span<byte> destination, ulong value) => MemoryMarshal.Write(destination, in value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ReadUInt16(ReadOnlySpan<byte> source) => MemoryMarshal.Read<ushort>(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint ReadUInt32(ReadOnlySpan<byte> source) => MemoryMarshal.Read<uint>(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ReadUInt64(ReadOnlySpan<byte> source) => MemoryMarshal.Read<ulong>(source);
}
