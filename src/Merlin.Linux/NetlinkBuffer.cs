using System.Buffers;
using System.Runtime.CompilerServices;

namespace Merlin.Linux;

/// <summary>
/// A growable byte buffer rented from <see cref="ArrayPool{T}"/>, holding one or more netlink messages
/// back to back. Reused across requests (<see cref="Clear"/>); return it with <see cref="Dispose"/>.
/// Write to it through a <see cref="NetlinkWriter"/>.
/// </summary>
public sealed class NetlinkBuffer : IDisposable
{
    private byte[] _array;
    private int _length;

    public NetlinkBuffer(int initialCapacity = 256) =>
        _array = ArrayPool<byte>.Shared.Rent(Math.Max(initialCapacity, Netlink.HeaderLength));

    /// <summary>Bytes written so far.</summary>
    public int Length => _length;

    public ReadOnlySpan<byte> WrittenSpan => _array.AsSpan(0, _length);

    public ReadOnlyMemory<byte> WrittenMemory => _array.AsMemory(0, _length);

    public void Clear() => _length = 0;

    /// <summary>Drops everything after the first <paramref name="length"/> bytes (undoes a half-written message).</summary>
    public void Truncate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, _length);
        _length = length;
    }

    /// <summary>Claims <paramref name="count"/> bytes at the end and returns them (not zeroed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal Span<byte> Append(int count)
    {
        if (_array.Length - _length < count) Grow(count);
        var span = _array.AsSpan(_length, count);
        _length += count;
        return span;
    }

    internal Span<byte> Slice(int offset, int count) => _array.AsSpan(offset, count);

    internal void WriteUInt16At(int offset, ushort value) => HostOrder.Write(_array.AsSpan(offset, 2), value);

    internal void WriteUInt32At(int offset, uint value) => HostOrder.Write(_array.AsSpan(offset, 4), value);

    internal ushort ReadUInt16At(int offset) => HostOrder.ReadUInt16(_array.AsSpan(offset, 2));

    internal uint ReadUInt32At(int offset) => HostOrder.ReadUInt32(_array.AsSpan(offset, 4));

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Grow(int count)
    {
        ObjectDisposedException.ThrowIf(_array.Length == 0, this);
        var needed = (long)_length + count;
        if (needed > Array.MaxLength) ThrowHelper.TooLong("netlink buffer", (int)Math.Min(needed, int.MaxValue), Array.MaxLength);
        var size = (int)Math.Min(Math.Max(needed, (long)_array.Length * 2), Array.MaxLength);
        var next = ArrayPool<byte>.Shared.Rent(size);
        _array.AsSpan(0, _length).CopyTo(next);
        ArrayPool<byte>.Shared.Return(_array);
        _array = next;
    }

    public void Dispose()
    {
        var array = _array;
        _array = [];
        _length = 0;
        if (array.Length != 0) ArrayPool<byte>.Shared.Return(array);
    }
}
