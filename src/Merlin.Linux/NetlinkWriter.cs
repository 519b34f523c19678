using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;

namespace Merlin.Linux;

/// <summary>Where a message began; hand it back to <see cref="NetlinkWriter.EndMessage"/>.</summary>
public readonly record struct MessageMark(int Offset);

/// <summary>Where a nested attribute began; hand it back to <see cref="NetlinkWriter.EndNested"/>.</summary>
public readonly record struct NestMark(int Offset);

/// <summary>
/// Appends netlink messages and attributes to a <see cref="NetlinkBuffer"/>. Lengths that depend on what
/// follows (nlmsg_len, a nested attribute's nla_len) are reserved as zero and filled in by
/// <see cref="EndMessage"/> / <see cref="EndNested"/> once the body is written. Every attribute is padded
/// with zeros to 4 bytes; nla_len counts the payload without that padding, as the kernel's nla_put does.
/// Integers are in host byte order unless the method says big-endian.
/// </summary>
public ref struct NetlinkWriter
{
    private readonly NetlinkBuffer _buffer;

    public NetlinkWriter(NetlinkBuffer buffer) => _buffer = buffer;

    public readonly int Length => _buffer.Length;

    /// <summary>Starts a message: nlmsghdr with a length to be filled in by <see cref="EndMessage"/>.</summary>
    public readonly MessageMark BeginMessage(ushort type, NetlinkFlags flags, uint sequence = 0, uint portId = 0)
    {
        var offset = _buffer.Length;
        var header = _buffer.Append(Netlink.HeaderLength);
        HostOrder.Write(header, 0u);
        HostOrder.Write(header[4..], type);
        HostOrder.Write(header[6..], (ushort)flags);
        HostOrder.Write(header[8..], sequence);
        HostOrder.Write(header[12..], portId);
        return new MessageMark(offset);
    }

    /// <summary>Writes struct genlmsghdr: command, version, two reserved zero bytes.</summary>
    public readonly void WriteGenericHeader(byte command, byte version)
    {
        var header = _buffer.Append(GenericNetlink.HeaderLength);
        header[0] = command;
        header[1] = version;
        header[2] = 0;
        header[3] = 0;
    }

    /// <summary>
    /// Writes struct nfgenmsg (nfnetlink, &lt;linux/netfilter/nfnetlink.h&gt;): the address family, version
    /// NFNETLINK_V0, and res_id in network byte order (a subsystem id on batch messages, else 0).
    /// </summary>
    public readonly void WriteNetfilterHeader(byte family, ushort resourceId)
    {
        var header = _buffer.Append(4);
        header[0] = family;
        header[1] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(header[2..], resourceId);
    }

    /// <summary>
    /// Appends a protocol's fixed header after nlmsghdr (struct ifinfomsg, struct ndmsg, …) of
    /// <paramref name="length"/> bytes, zeroed and padded to 4 bytes, and returns it to be filled in.
    /// </summary>
    public readonly Span<byte> WriteHeader(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var span = _buffer.Append(Netlink.Align(length));
        span.Clear();
        return span[..length];
    }

    /// <summary>Adds <paramref name="flags"/> to a message already written (e.g. NLM_F_ACK on the last message of a batch, once it is known to be the last).</summary>
    public readonly void AddFlags(MessageMark mark, NetlinkFlags flags) =>
        _buffer.WriteUInt16At(mark.Offset + 6, (ushort)(_buffer.ReadUInt16At(mark.Offset + 6) | (ushort)flags));

    /// <summary>Fills in nlmsg_len: everything written since <paramref name="mark"/>, padding included.</summary>
    public readonly void EndMessage(MessageMark mark) =>
        _buffer.WriteUInt32At(mark.Offset, (uint)(_buffer.Length - mark.Offset));

    /// <summary>Starts an attribute whose payload is attributes; NLA_F_NESTED is set in its type.</summary>
    public readonly NestMark BeginNested(ushort type)
    {
        var offset = _buffer.Length;
        var header = _buffer.Append(Netlink.AttributeHeaderLength);
        HostOrder.Write(header, (ushort)0);
        HostOrder.Write(header[2..], (ushort)(type | Netlink.AttributeNested));
        return new NestMark(offset);
    }

    /// <summary>Fills in the nested attribute's nla_len: its header and every attribute inside, padded.</summary>
    public readonly void EndNested(NestMark mark)
    {
        var length = _buffer.Length - mark.Offset;
        if (length > ushort.MaxValue) ThrowHelper.TooLong("nested attribute", length, ushort.MaxValue);
        _buffer.WriteUInt16At(mark.Offset, (ushort)length);
    }

    public readonly void WriteUInt8(ushort type, byte value) => Attribute(type, 1)[0] = value;

    public readonly void WriteUInt16(ushort type, ushort value) => HostOrder.Write(Attribute(type, 2), value);

    public readonly void WriteUInt32(ushort type, uint value) => HostOrder.Write(Attribute(type, 4), value);

    public readonly void WriteUInt64(ushort type, ulong value) => HostOrder.Write(Attribute(type, 8), value);

    public readonly void WriteInt32(ushort type, int value) => WriteUInt32(type, (uint)value);

    /// <summary>A __be16 attribute (ports).</summary>
    public readonly void WriteUInt16BigEndian(ushort type, ushort value) => BinaryPrimitives.WriteUInt16BigEndian(Attribute(type, 2), value);

    /// <summary>A __be32 attribute.</summary>
    public readonly void WriteUInt32BigEndian(ushort type, uint value) => BinaryPrimitives.WriteUInt32BigEndian(Attribute(type, 4), value);

    /// <summary>An attribute with an opaque payload (NLA_BINARY, structs).</summary>
    public readonly void WriteBytes(ushort type, scoped ReadOnlySpan<byte> value) => value.CopyTo(Attribute(type, value.Length));

    /// <summary>An attribute with no payload (NLA_FLAG).</summary>
    public readonly void WriteFlag(ushort type) => Attribute(type, 0);

    /// <summary>A NUL-terminated string (NLA_NUL_STRING / nla_put_string): the UTF-8 bytes and one zero byte.</summary>
    public readonly void WriteString(ushort type, string value)
    {
        var count = Encoding.UTF8.GetByteCount(value);
        var payload = Attribute(type, count + 1);
        Encoding.UTF8.GetBytes(value, payload);
        payload[count] = 0;
    }

    /// <summary>Appends an attribute header and returns its payload; the padding after it is zeroed here.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private readonly Span<byte> Attribute(ushort type, int payloadLength)
    {
        var length = Netlink.AttributeHeaderLength + payloadLength;
        if (length > ushort.MaxValue) ThrowHelper.TooLong("attribute", length, ushort.MaxValue);
        var padded = Netlink.Align(length);
        var span = _buffer.Append(padded);
        HostOrder.Write(span, (ushort)length);
        HostOrder.Write(span[2..], type);
        span[length..].Clear();
        return span.Slice(Netlink.AttributeHeaderLength, payloadLength);
    }
}
