using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;

namespace Merlin.Linux;

/// <summary>
/// Walks the netlink messages of one datagram. Every nlmsg_len is checked against the header size and
/// the bytes that remain before the message is handed out, so a lying length raises
/// <see cref="NetlinkDecodeException"/> instead of reading past the data. The last message may omit its
/// trailing alignment padding.
/// </summary>
public ref struct NetlinkMessageReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _offset;

    public NetlinkMessageReader(ReadOnlySpan<byte> datagram) => _data = datagram;

    /// <summary>Offset of the next message in the datagram.</summary>
    public readonly int Offset => _offset;

    public bool TryRead(out NetlinkMessage message)
    {
        var remaining = _data.Length - _offset;
        if (remaining == 0)
        {
            message = default;
            return false;
        }
        if (remaining < Netlink.HeaderLength)
            ThrowHelper.Decode($"{remaining} bytes at offset {_offset} are too short for a netlink message header ({Netlink.HeaderLength})");
        var header = _data.Slice(_offset, Netlink.HeaderLength);
        var length = HostOrder.ReadUInt32(header);
        if (length < Netlink.HeaderLength)
            ThrowHelper.Decode($"nlmsg_len {length} at offset {_offset} is shorter than the header itself");
        if (length > (uint)remaining)
            ThrowHelper.Decode($"nlmsg_len {length} at offset {_offset} runs past the {remaining} bytes that remain");
        message = new NetlinkMessage(
            HostOrder.ReadUInt16(header[4..]),
            (NetlinkFlags)HostOrder.ReadUInt16(header[6..]),
            HostOrder.ReadUInt32(header[8..]),
            HostOrder.ReadUInt32(header[12..]),
            _data.Slice(_offset + Netlink.HeaderLength, (int)length - Netlink.HeaderLength));
        _offset += Math.Min(Netlink.Align((int)length), remaining);
        return true;
    }
}

/// <summary>One netlink message: its header fields and the payload after the 16-byte header.</summary>
public readonly ref struct NetlinkMessage
{
    public NetlinkMessage(ushort type, NetlinkFlags flags, uint sequence, uint portId, ReadOnlySpan<byte> payload)
    {
        Type = type;
        Flags = flags;
        Sequence = sequence;
        PortId = portId;
        Payload = payload;
    }

    public ushort Type { get; }
    public NetlinkFlags Flags { get; }
    public uint Sequence { get; }
    public uint PortId { get; }
    public ReadOnlySpan<byte> Payload { get; }

    public bool IsError => Type == NetlinkMessageType.Error;
    public bool IsDone => Type == NetlinkMessageType.Done;

    /// <summary>Reads the generic-netlink header; the attributes follow it.</summary>
    public GenericMessage ReadGeneric()
    {
        if (Payload.Length < GenericNetlink.HeaderLength)
            ThrowHelper.Decode($"generic-netlink message of type {Type} has {Payload.Length} payload bytes, fewer than its {GenericNetlink.HeaderLength}-byte header");
        return new GenericMessage(Payload[0], Payload[1], Payload[GenericNetlink.HeaderLength..]);
    }

    /// <summary>Reads an NLMSG_ERROR: the errno (0 for an ACK), the echoed request header and any extended-ACK attributes.</summary>
    public NetlinkError ReadError()
    {
        var payload = Payload;
        // int error; struct nlmsghdr msg; [request payload unless NLM_F_CAPPED]; [TLVs if NLM_F_ACK_TLVS]
        if (payload.Length < 4 + Netlink.HeaderLength)
            ThrowHelper.Decode($"NLMSG_ERROR of {payload.Length} payload bytes cannot hold an error code and the request header");
        var errno = ReadErrno(payload);
        var requestLength = HostOrder.ReadUInt32(payload[4..]);
        var requestType = HostOrder.ReadUInt16(payload[8..]);
        var requestSequence = HostOrder.ReadUInt32(payload[12..]);
        string? message = null;
        if ((Flags & NetlinkFlags.AckTlvs) != 0)
        {
            var tlvOffset = 4 + Netlink.HeaderLength;
            if ((Flags & NetlinkFlags.Capped) == 0)
            {
                if (requestLength < Netlink.HeaderLength || requestLength > (uint)(payload.Length - 4))
                    ThrowHelper.Decode($"NLMSG_ERROR echoes a request of {requestLength} bytes in {payload.Length - 4} bytes");
                tlvOffset = Math.Min(4 + Netlink.Align((int)requestLength), payload.Length);
            }
            foreach (var attribute in new AttributeReader(payload[tlvOffset..]))
            {
                if (attribute.Type == NetlinkErrorAttribute.Message) message = attribute.GetString();
            }
        }
        return new NetlinkError(errno, requestType, requestSequence, message);
    }

    /// <summary>The errno carried by NLMSG_DONE at the end of a dump (0 when the dump succeeded).</summary>
    public int ReadDoneErrno() => Payload.Length < 4 ? 0 : ReadErrno(Payload);

    private static int ReadErrno(ReadOnlySpan<byte> payload)
    {
        var error = (int)HostOrder.ReadUInt32(payload);
        // The kernel sends 0 or -errno, and errnos stop at MAX_ERRNO (4095).
        if (error > 0 || error < -4095) ThrowHelper.Decode($"error code {error} is neither 0 nor a negative errno");
        return -error;
    }
}

/// <summary>What an NLMSG_ERROR says: <see cref="Errno"/> 0 is an acknowledgement.</summary>
public readonly record struct NetlinkError(int Errno, ushort RequestType, uint RequestSequence, string? KernelMessage)
{
    public bool IsAck => Errno == 0;
}

/// <summary>A generic-netlink message: command, version, then attributes.</summary>
public readonly ref struct GenericMessage
{
    public GenericMessage(byte command, byte version, ReadOnlySpan<byte> attributes)
    {
        Command = command;
        Version = version;
        AttributeBytes = attributes;
    }

    public byte Command { get; }
    public byte Version { get; }
    public ReadOnlySpan<byte> AttributeBytes { get; }
    public AttributeReader Attributes => new(AttributeBytes);
}

/// <summary>
/// Walks a run of attributes (usable in <c>foreach</c>). Each nla_len is checked against the header size
/// and the bytes that remain before the attribute is handed out; 1–3 stray bytes at the end are an error.
/// </summary>
public ref struct AttributeReader
{
    private ReadOnlySpan<byte> _remaining;
    private NetlinkAttribute _current;

    public AttributeReader(ReadOnlySpan<byte> attributes)
    {
        _remaining = attributes;
        _current = default;
    }

    public readonly AttributeReader GetEnumerator() => this;

    public readonly NetlinkAttribute Current => _current;

    public bool MoveNext()
    {
        if (_remaining.IsEmpty) return false;
        if (_remaining.Length < Netlink.AttributeHeaderLength)
            ThrowHelper.Decode($"{_remaining.Length} stray bytes where an attribute header ({Netlink.AttributeHeaderLength} bytes) should be");
        var length = HostOrder.ReadUInt16(_remaining);
        var type = HostOrder.ReadUInt16(_remaining[2..]);
        if (length < Netlink.AttributeHeaderLength)
            ThrowHelper.Decode($"attribute {type & Netlink.AttributeTypeMask}: nla_len {length} is shorter than the header itself");
        if (length > _remaining.Length)
            ThrowHelper.Decode($"attribute {type & Netlink.AttributeTypeMask}: nla_len {length} runs past the {_remaining.Length} bytes that remain");
        _current = new NetlinkAttribute(type, _remaining[Netlink.AttributeHeaderLength..length]);
        _remaining = _remaining[Math.Min(Netlink.Align(length), _remaining.Length)..];
        return true;
    }
}

/// <summary>
/// One attribute. The getters check that the payload has exactly the declared width of the type asked
/// for, so a u16 is never read from a u32 attribute or past a short one.
/// </summary>
public readonly ref struct NetlinkAttribute
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly ushort _rawType;

    public NetlinkAttribute(ushort rawType, ReadOnlySpan<byte> payload)
    {
        _rawType = rawType;
        Payload = payload;
    }

    /// <summary>The attribute type without the NLA_F_NESTED / NLA_F_NET_BYTEORDER bits.</summary>
    public ushort Type => (ushort)(_rawType & Netlink.AttributeTypeMask);

    /// <summary>NLA_F_NESTED was set. The kernel does not always set it (IPVS does not); nesting is known from the type.</summary>
    public bool HasNestedFlag => (_rawType & Netlink.AttributeNested) != 0;

    public ReadOnlySpan<byte> Payload { get; }

    public byte GetUInt8() => Fixed(1)[0];

    public ushort GetUInt16() => HostOrder.ReadUInt16(Fixed(2));

    public uint GetUInt32() => HostOrder.ReadUInt32(Fixed(4));

    public ulong GetUInt64() => HostOrder.ReadUInt64(Fixed(8));

    public int GetInt32() => (int)GetUInt32();

    /// <summary>A __be16 (ports).</summary>
    public ushort GetUInt16BigEndian() => BinaryPrimitives.ReadUInt16BigEndian(Fixed(2));

    /// <summary>A __be32.</summary>
    public uint GetUInt32BigEndian() => BinaryPrimitives.ReadUInt32BigEndian(Fixed(4));

    /// <summary>A __be64 (nf_tables handles and timeouts).</summary>
    public ulong GetUInt64BigEndian() => BinaryPrimitives.ReadUInt64BigEndian(Fixed(8));

    /// <summary>The payload as attributes (a nested attribute).</summary>
    public AttributeReader GetAttributes() => new(Payload);

    /// <summary>
    /// A string up to its first NUL (or the whole payload if it has none, as NLA_STRING allows).
    /// Bytes that are not UTF-8 raise <see cref="NetlinkDecodeException"/>.
    /// </summary>
    public string GetString()
    {
        var bytes = Payload;
        var nul = bytes.IndexOf((byte)0);
        if (nul >= 0) bytes = bytes[..nul];
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            return ThrowHelper.Decode<string>($"attribute {Type}: string is not UTF-8");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ReadOnlySpan<byte> Fixed(int width)
    {
        if (Payload.Length != width) ThrowHelper.AttributeWidth(Type, width, Payload.Length);
        return Payload;
    }
}
