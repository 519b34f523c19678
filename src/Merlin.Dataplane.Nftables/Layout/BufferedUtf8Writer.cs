using System.Buffers;
using System.Globalization;
using System.Text;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// UTF-8 text into a pooled 64 KiB buffer, handed to <see cref="Write"/> a buffer at a time: how a
/// script reaches nft's standard input and how map contents reach their hash, without a string or a
/// call per element.
/// </summary>
internal abstract class BufferedUtf8Writer : IDisposable
{
    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(1 << 16);
    private int _used;

    /// <summary>Takes the next bytes of the text (a full buffer, the rest at <see cref="Flush"/>, or one large piece).</summary>
    protected abstract void Write(ReadOnlySpan<byte> bytes);

    public void Append(byte b)
    {
        if (_used == _buffer.Length) Flush();
        _buffer[_used++] = b;
    }

    public void Append(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > _buffer.Length - _used)
        {
            Flush();
            if (bytes.Length > _buffer.Length) { Write(bytes); return; }
        }
        bytes.CopyTo(_buffer.AsSpan(_used));
        _used += bytes.Length;
    }

    public void Append(string text)
    {
        int max = Encoding.UTF8.GetMaxByteCount(text.Length);
        if (max > _buffer.Length - _used) Flush();
        if (max > _buffer.Length) { Write(Encoding.UTF8.GetBytes(text)); return; }
        _used += Encoding.UTF8.GetBytes(text, _buffer.AsSpan(_used));
    }

    public void Append(int number)
    {
        if (_buffer.Length - _used < 11) Flush();
        number.TryFormat(_buffer.AsSpan(_used), out int written, default, CultureInfo.InvariantCulture);
        _used += written;
    }

    public void Flush()
    {
        if (_used == 0) return;
        Write(_buffer.AsSpan(0, _used));
        _used = 0;
    }

    public virtual void Dispose()
    {
        if (_buffer.Length == 0) return;
        ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = [];
    }
}
