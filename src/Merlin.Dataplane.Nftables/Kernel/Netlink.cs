using System.Net.Sockets;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>A netlink attribute: its type (flags stripped) and value.</summary>
internal readonly record struct NlAttribute(ushort Type, ReadOnlyMemory<byte> Value)
{
    public uint U32BigEndian => BinaryPrimitives.ReadUInt32BigEndian(Value.Span);
    public ulong U64BigEndian => BinaryPrimitives.ReadUInt64BigEndian(Value.Span);

    /// <summary>A NUL-terminated string attribute.</summary>
    public string String
    {
        get
        {
            var span = Value.Span;
            int nul = span.IndexOf((byte)0);
            return Encoding.UTF8.GetString(nul < 0 ? span : span[..nul]);
        }
    }

    public static List<NlAttribute> Parse(ReadOnlyMemory<byte> data)
    {
        var result = new List<NlAttribute>();
        var span = data.Span;
        int offset = 0;
        while (offset + 4 <= span.Length)
        {
            int length = BinaryPrimitives.ReadUInt16LittleEndian(span[offset..]);
            ushort type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(span[(offset + 2)..]) & 0x3fff);
            if (length < 4 || offset + length > span.Length) throw new InvalidDataException($"netlink attribute of length {length} at {offset} overruns its message ({span.Length} bytes)");
            result.Add(new NlAttribute(type, data.Slice(offset + 4, length - 4)));
            offset += (length + 3) & ~3;
        }
        return result;
    }
}

/// <summary>
/// A blocking NETLINK_NETFILTER socket that sends one request and collects its replies (a single
/// answer or a multi-part dump). Send and receive time out after five seconds, so a kernel that
/// does not answer cannot hang a reconcile pass.
/// </summary>
internal sealed unsafe class NetfilterSocket : IDisposable
{
    private const ushort NLM_F_REQUEST = 0x1, NLM_F_ACK = 0x4, NLM_F_DUMP = 0x300;
    private const ushort NLMSG_ERROR = 2, NLMSG_DONE = 3;
    private const int HeaderLength = 16, GenMsgLength = 4;

    private readonly SafeSocketHandle _socket;
    private readonly int _fd; // _socket's, for the calls below; valid until Dispose
    private readonly uint _portId;
    private uint _sequence = (uint)Environment.TickCount;
    private readonly byte[] _receive = new byte[1 << 18];

    /// <summary>Takes over a netlink socket made in its namespace (see <see cref="Open"/>).</summary>
    private NetfilterSocket(SafeSocketHandle socket)
    {
        _socket = socket;
        _fd = (int)socket.DangerousGetHandle();
        try
        {
            var address = new Native.SockaddrNl { Family = Native.AF_NETLINK };
            if (Native.bind(_fd, &address, sizeof(Native.SockaddrNl)) != 0) throw Error("bind");
            int length = sizeof(Native.SockaddrNl);
            if (Native.getsockname(_fd, &address, &length) != 0) throw Error("getsockname");
            _portId = address.Pid;
            // Errors answer with the failed message's header only, not its payload (a 32 kB element list).
            int on = 1;
            Native.setsockopt(_fd, Native.SOL_NETLINK, Native.NETLINK_CAP_ACK, &on, sizeof(int));
            var timeout = new Native.Timeval { Seconds = 5 };
            Native.setsockopt(_fd, Native.SOL_SOCKET, Native.SO_RCVTIMEO, &timeout, sizeof(Native.Timeval));
            Native.setsockopt(_fd, Native.SOL_SOCKET, Native.SO_SNDTIMEO, &timeout, sizeof(Native.Timeval));
        }
        catch
        {
            _socket.Dispose();
            throw;
        }
    }

    /// <summary>Opens a socket in the named network namespace (null: this process's own).</summary>
    public static NetfilterSocket Open(string? networkNamespace) => new(Socket(networkNamespace, Native.NETLINK_NETFILTER));

    /// <summary>A NETLINK_ROUTE socket (links, neighbours) in the named network namespace, for <see cref="RequestRaw"/>.</summary>
    public static NetfilterSocket OpenRoute(string? networkNamespace) => new(Socket(networkNamespace, 0));

    /// <summary>Only the socket is made in the namespace (on this thread, around socket(2) only); it is bound from here.</summary>
    private static SafeSocketHandle Socket(string? networkNamespace, int protocol) =>
        Merlin.Netlink.NetworkNamespace.TryCreateSocket(networkNamespace, Native.AF_NETLINK, Native.SOCK_RAW | Native.SOCK_CLOEXEC, protocol, out var socket, out var errno)
            ? socket
            : throw new IOException($"socket(AF_NETLINK, SOCK_RAW, {protocol}){(networkNamespace is null ? "" : $" in network namespace {networkNamespace}")} failed: errno {errno}");

    /// <summary>
    /// Sends an nf_tables request and returns the attribute payload (after nfgenmsg) of every reply.
    /// A kernel error becomes a <see cref="NetlinkException"/> carrying the errno.
    /// </summary>
    public List<ReadOnlyMemory<byte>> Request(byte messageType, byte family, bool dump, ReadOnlySpan<byte> attributes)
    {
        var payload = new byte[GenMsgLength + attributes.Length];
        payload[0] = family;
        payload[1] = 0;   // NFNETLINK_V0
        attributes.CopyTo(payload.AsSpan(GenMsgLength));
        var replies = RequestRaw((ushort)((10 << 8) | messageType), dump, payload);   // NFNL_SUBSYS_NFTABLES
        for (int i = 0; i < replies.Count; i++) replies[i] = replies[i][GenMsgLength..];
        return replies;
    }

    /// <summary>
    /// Sends one request of <paramref name="requestType"/> with <paramref name="payload"/> after the
    /// netlink header and returns what follows the header in every reply (at least 4 bytes of it).
    /// </summary>
    public List<ReadOnlyMemory<byte>> RequestRaw(ushort requestType, bool dump, ReadOnlySpan<byte> payload)
    {
        byte messageType = (byte)requestType;
        uint sequence = ++_sequence;
        int total = HeaderLength + payload.Length;
        var message = new byte[total];
        var m = message.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(m, (uint)total);
        BinaryPrimitives.WriteUInt16LittleEndian(m[4..], requestType);
        BinaryPrimitives.WriteUInt16LittleEndian(m[6..], (ushort)(NLM_F_REQUEST | (dump ? NLM_F_DUMP : NLM_F_ACK)));
        BinaryPrimitives.WriteUInt32LittleEndian(m[8..], sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(m[12..], 0);
        payload.CopyTo(m[HeaderLength..]);
        fixed (byte* p = message)
        {
            if (Native.send(_fd, p, total, 0) != total) throw Error("send");
        }

        var replies = new List<ReadOnlyMemory<byte>>();
        while (true)
        {
            nint received;
            fixed (byte* p = _receive) received = Native.recv(_fd, p, _receive.Length, 0);
            if (received < 0) throw Error("recv");
            int offset = 0;
            while (NextMessage((int)received, ref offset, out var span, out var type, out var seq, out var pid))
            {
                if (seq != sequence || (pid != 0 && pid != _portId)) continue;   // a stale answer
                if (type == NLMSG_DONE) return replies;
                if (type == NLMSG_ERROR)
                {
                    int errno = -BinaryPrimitives.ReadInt32LittleEndian(span[HeaderLength..]);
                    if (errno != 0) throw new NetlinkException(errno, messageType);
                    return replies;   // the ACK after a non-dump answer
                }
                if (span.Length >= HeaderLength + GenMsgLength)
                    replies.Add(span[HeaderLength..].ToArray());
            }
        }
    }

    /// <summary>A sequence number for a message of a batch (<see cref="SendBatch"/>).</summary>
    public uint NextSequence() => ++_sequence;

    /// <summary>
    /// Makes the socket's send buffer hold a batch of <paramref name="bytes"/> and returns the largest
    /// batch it holds: the kernel takes a batch in one message, refused if longer than the buffer.
    /// Raised past the system's limit with SO_SNDBUFFORCE (CAP_NET_ADMIN, which nftables needs anyway).
    /// </summary>
    public int ReserveSendBuffer(int bytes)
    {
        if (_sendBuffer - 32 >= bytes) return _sendBuffer - 32;
        int wanted = bytes + 4096;
        if (Native.setsockopt(_fd, Native.SOL_SOCKET, Native.SO_SNDBUFFORCE, &wanted, sizeof(int)) != 0)
            Native.setsockopt(_fd, Native.SOL_SOCKET, Native.SO_SNDBUF, &wanted, sizeof(int));
        int actual = 0, length = sizeof(int);
        if (Native.getsockopt(_fd, Native.SOL_SOCKET, Native.SO_SNDBUF, &actual, &length) != 0) throw Error("getsockopt");
        _sendBuffer = actual;   // the kernel doubles what it is given, and keeps the doubled value
        return actual - 32;
    }

    private int _sendBuffer;

    /// <summary>
    /// Sends a batch (NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END, one transaction, sequence numbers
    /// <paramref name="firstSequence"/>…<paramref name="ackSequence"/>) and waits for the
    /// acknowledgement of its message <paramref name="ackSequence"/>, the one message sent with
    /// NLM_F_ACK. The kernel applies the whole batch inside the send and queues every answer before
    /// the send returns: an error of any message, or of the commit (answered against the batch's
    /// first message), comes before that acknowledgement and fails the batch. After an error the
    /// rest of the batch's answers are read without waiting, so none is left for the next request;
    /// answers to other requests (sequence numbers outside the batch) are skipped.
    /// </summary>
    public void SendBatch(ReadOnlySpan<byte> batch, uint firstSequence, uint ackSequence)
    {
        if (ReserveSendBuffer(batch.Length) < batch.Length) throw new IOException($"a batch of {batch.Length} bytes does not fit the netlink send buffer ({_sendBuffer} bytes)");
        fixed (byte* p = batch)
        {
            if (Native.send(_fd, p, batch.Length, 0) != batch.Length) throw Error("send");
        }
        NetlinkException? failure = null;
        while (true)
        {
            nint received;
            fixed (byte* p = _receive) received = Native.recv(_fd, p, _receive.Length, failure is null ? 0 : Native.MSG_DONTWAIT);
            if (received < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (failure is not null && errno is Native.EAGAIN) throw failure;   // every answer read
                // ENOBUFS: answers were dropped, the batch's outcome is unknown (the caller reads the tables again).
                throw new IOException($"recv failed after a batch: errno {errno}{(failure is null ? "" : $" (after: {failure.Message})")}");
            }
            int offset = 0;
            while (NextMessage((int)received, ref offset, out var span, out var type, out var seq, out _))
            {
                if (type != NLMSG_ERROR || span.Length < HeaderLength + 4 + HeaderLength) continue;
                if (seq - firstSequence > ackSequence - firstSequence) continue;   // not this batch's (wraps correctly)
                int code = -BinaryPrimitives.ReadInt32LittleEndian(span[HeaderLength..]);
                // The error message repeats the header of the message it answers: its type names the request.
                byte request = (byte)BinaryPrimitives.ReadUInt16LittleEndian(span[(HeaderLength + 4 + 4)..]);
                if (code != 0) failure ??= new NetlinkException(code, request);
                if (seq == ackSequence)
                {
                    if (failure is not null) throw failure;
                    return;
                }
            }
        }
    }

    /// <summary>The next message of what the last receive read (from <paramref name="offset"/>, which it advances), or false at the end.</summary>
    private bool NextMessage(int received, ref int offset, out Span<byte> message, out ushort type, out uint seq, out uint pid)
    {
        message = default;
        type = 0;
        seq = pid = 0;
        if (offset + HeaderLength > received) return false;
        var span = _receive.AsSpan(offset, received - offset);
        int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(span);
        if (length < HeaderLength || length > span.Length) throw new InvalidDataException($"netlink message of length {length} in a {span.Length}-byte read");
        type = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
        seq = BinaryPrimitives.ReadUInt32LittleEndian(span[8..]);
        pid = BinaryPrimitives.ReadUInt32LittleEndian(span[12..]);
        message = span[..length];
        offset += (length + 3) & ~3;
        return true;
    }

    public void Dispose() => _socket.Dispose();

    private static IOException Error(string call) => new($"{call} failed: errno {Marshal.GetLastPInvokeError()}");
}

internal sealed class NetlinkException(int errno, byte messageType)
    : IOException($"nf_tables request {messageType} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})")
{
    public const int ENOENT = 2;
    public int Errno { get; } = errno;
}

/// <summary>Builds the attributes of a request.</summary>
internal sealed class AttributeWriter
{
    private readonly List<byte> _bytes = new();

    public AttributeWriter String(ushort type, string value)
    {
        var text = Encoding.UTF8.GetBytes(value);
        int length = 4 + text.Length + 1;
        Span<byte> header = stackalloc byte[4];
        BinaryPrimitives.WriteUInt16LittleEndian(header, (ushort)length);
        BinaryPrimitives.WriteUInt16LittleEndian(header[2..], type);
        _bytes.AddRange(header);
        _bytes.AddRange(text);
        _bytes.Add(0);
        while (_bytes.Count % 4 != 0) _bytes.Add(0);
        return this;
    }

    public byte[] ToArray() => _bytes.ToArray();
}
