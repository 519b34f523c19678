namespace Merlin.Linux.Tests;

/// <summary>
/// A scripted kernel behind <see cref="INetlinkTransport"/>: records every datagram sent, hands each message
/// to <see cref="Respond"/>, and queues the datagrams it returns for the client to receive. An empty queue
/// is a receive timeout.
/// </summary>
internal sealed class FakeKernel : INetlinkTransport
{
    /// <summary>One message the client sent, with its header fields decoded.</summary>
    public sealed record Sent(ushort Type, NetlinkFlags Flags, uint Sequence, uint PortId, byte[] Bytes)
    {
        public byte Command => Bytes.Length > 16 ? Bytes[16] : (byte)0;

        /// <summary>The message with sequence and port id zeroed and flags as the codec wrote them (Request only).</summary>
        public string Hex => Convert.ToHexString([.. Bytes[..6], .. BitConverter.GetBytes((ushort)NetlinkFlags.Request), .. new byte[8], .. Bytes[16..]]);
    }

    private readonly Queue<byte[]> _replies = new();

    public FakeKernel(uint portId = 4242) => PortId = portId;

    public uint PortId { get; }

    public NetlinkSocketOptions Options { get; } = new() { ReceiveTimeout = TimeSpan.FromMilliseconds(1) };

    /// <summary>Returns the reply datagrams for one message. Default: acknowledge as netlink does (ACK only if asked).</summary>
    public Func<Sent, IEnumerable<byte[]>> Respond { get; set; } = m => Ack(m, 0);

    public List<byte[]> Datagrams { get; } = [];

    public List<Sent> Messages { get; } = [];

    public bool Disposed { get; private set; }

    public bool TrySend(ReadOnlySpan<byte> datagram, string request)
    {
        ObjectDisposedException.ThrowIf(Disposed, this);
        Datagrams.Add(datagram.ToArray());
        var reader = new NetlinkMessageReader(datagram);
        var at = 0;
        while (reader.TryRead(out var m))
        {
            var sent = new Sent(m.Type, m.Flags, m.Sequence, m.PortId, datagram.Slice(at, 16 + m.Payload.Length).ToArray());
            at = reader.Offset;
            Messages.Add(sent);
            foreach (var reply in Respond(sent)) _replies.Enqueue(reply);
        }
        return true;
    }

    public int Receive(Span<byte> buffer, string request)
    {
        ObjectDisposedException.ThrowIf(Disposed, this);
        if (!_replies.TryDequeue(out var next)) return -1;
        next.CopyTo(buffer);
        return next.Length;
    }

    /// <summary>Queues a datagram as if the kernel had sent it unprompted (a leftover).</summary>
    public void Enqueue(byte[] datagram) => _replies.Enqueue(datagram);

    /// <summary>What netlink_rcv_skb sends: an error reply if <paramref name="errno"/> is not 0, else an ACK only if asked.</summary>
    public static IEnumerable<byte[]> Ack(Sent m, int errno) =>
        errno != 0 || (m.Flags & NetlinkFlags.Ack) != 0 ? [Wire.Error(m.Sequence, m.PortId, errno, m.Type).ToArray()] : [];

    public void Dispose() => Disposed = true;
}
