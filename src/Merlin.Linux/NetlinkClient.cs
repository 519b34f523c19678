using System.Buffers;

namespace Merlin.Linux;

/// <summary>Called for each reply message of a request or dump (not for ACKs, errors or NLMSG_DONE).</summary>
public delegate void NetlinkReplyHandler<in TState>(NetlinkMessage message, TState state);

/// <summary>
/// Request/reply over a <see cref="NetlinkSocket"/>: stamps each request with a fresh sequence number and
/// our port id, accepts only replies that carry both back (anything else is a leftover of an abandoned
/// request and is dropped), turns NLMSG_ERROR into <see cref="NetlinkException"/>, follows multi-part dumps
/// to NLMSG_DONE, and sends batches several messages per datagram (see <see cref="ExecuteBatch"/>).
/// After a timeout or lost replies the socket is replaced, so nothing stale reaches the next request.
/// Thread-safe: one request at a time.
/// </summary>
public sealed class NetlinkClient : IDisposable
{
    private readonly Func<INetlinkTransport> _open;
    private readonly Lock _lock = new();
    private INetlinkTransport _socket;
    private byte[] _receive;
    private uint _sequence;
    private bool _disposed;

    /// <param name="open">Opens the transport, now and again after a reset (a socket, or a test's scripted kernel).</param>
    public NetlinkClient(Func<INetlinkTransport> open)
    {
        _open = open;
        var socket = _socket = open();
        _receive = ArrayPool<byte>.Shared.Rent(socket.Options.MaxDatagramSize);
        // Start where a previous client in this process is unlikely to have been (only a readability aid in
        // traces: replies are matched on port id as well).
        _sequence = (uint)Environment.TickCount;
    }

    public static NetlinkClient Open(int protocol, NetlinkSocketOptions? options = null) =>
        new(() => NetlinkSocket.Open(protocol, options));

    /// <summary>The current transport (replaced after a timeout or dropped replies).</summary>
    public INetlinkTransport Transport => _socket;

    /// <summary>Replies dropped because they answered an earlier (abandoned) request or came from elsewhere.</summary>
    public long StaleMessages { get; private set; }

    /// <summary>Times the socket was replaced after a timeout or dropped replies.</summary>
    public int SocketResets { get; private set; }

    /// <summary>
    /// Sends the single message in <paramref name="request"/> with NLM_F_REQUEST | NLM_F_ACK and waits for
    /// its acknowledgement. Reply messages that arrive before the ACK (a "get" answer) go to
    /// <paramref name="onReply"/>.
    /// </summary>
    public void Execute<TState>(NetlinkBuffer request, string description, NetlinkReplyHandler<TState>? onReply, TState state)
        => Run(request, description, dump: false, onReply, state, CancellationToken.None);

    /// <summary>Sends the single message in <paramref name="request"/> and waits for its ACK.</summary>
    public void Execute(NetlinkBuffer request, string description)
        => Run<object?>(request, description, dump: false, null, null, CancellationToken.None);

    /// <summary>
    /// Sends the single message in <paramref name="request"/> with NLM_F_REQUEST | NLM_F_DUMP and hands every
    /// reply message to <paramref name="onReply"/> until NLMSG_DONE. If the handler throws, the rest of the
    /// dump is still read (so the kernel's dump finishes and the socket stays in step) and the first
    /// exception is rethrown.
    /// </summary>
    public void Dump<TState>(NetlinkBuffer request, string description, NetlinkReplyHandler<TState> onReply, TState state, CancellationToken ct = default)
        => Run(request, description, dump: true, onReply, state, ct);

    private void Run<TState>(NetlinkBuffer request, string description, bool dump, NetlinkReplyHandler<TState>? onReply, TState state, CancellationToken ct)
    {
        CheckSingleMessage(request);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var seq = ++_sequence;
            var flags = (NetlinkFlags)request.ReadUInt16At(6) | NetlinkFlags.Request | (dump ? NetlinkFlags.Dump : NetlinkFlags.Ack);
            request.WriteUInt16At(6, (ushort)flags);
            request.WriteUInt32At(8, seq);
            request.WriteUInt32At(12, _socket.PortId);
            if (!_socket.TrySend(request.WrittenSpan, description)) Timeout(description);

            Exception? failure = null;
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                var length = ReceiveOrReset(description);
                try
                {
                    var reader = new NetlinkMessageReader(_receive.AsSpan(0, length));
                    while (reader.TryRead(out var message))
                    {
                        if (message.Sequence != seq || message.PortId != _socket.PortId)
                        {
                            StaleMessages++;
                            continue;
                        }
                        if (message.IsError)
                        {
                            var error = message.ReadError();
                            if (error.Errno != 0) throw new NetlinkException(error.Errno, description, error.KernelMessage);
                            if (!dump) return;
                            continue;
                        }
                        if (message.IsDone)
                        {
                            var errno = message.ReadDoneErrno();
                            if (failure is not null) throw failure;
                            if (errno != 0) throw new NetlinkException(errno, description);
                            return;
                        }
                        if (message.Type < NetlinkMessageType.MinType) continue; // NOOP, OVERRUN
                        if (failure is null && onReply is not null)
                        {
                            try
                            {
                                onReply(message, state);
                            }
                            catch (Exception e) when (dump)
                            {
                                failure = e; // keep reading to NLMSG_DONE, then rethrow
                            }
                        }
                    }
                }
                catch (NetlinkDecodeException e) when (dump && failure is null)
                {
                    failure = e; // a malformed datagram: skip it, still look for this dump's NLMSG_DONE
                }
            }
        }
    }

    /// <summary>
    /// Executes every message in <paramref name="messages"/> (written back to back, flags and sequence
    /// numbers are set here) with few system calls: up to <see cref="NetlinkBatchOptions.MaxMessagesPerSend"/>
    /// messages go in one datagram, which the kernel processes in order inside a single send. Only the last
    /// message of a datagram asks for an ACK; the kernel reports every failure anyway, in order, so when that
    /// ACK arrives every message of the datagram is accounted for. A failed message does not stop the ones
    /// after it. Only "do" requests belong in a batch, not dumps.
    /// </summary>
    /// <param name="describe">Describes message <c>i</c> for an error; called only for failures.</param>
    public NetlinkBatchResult ExecuteBatch(NetlinkBuffer messages, Func<int, string> describe, NetlinkBatchOptions? options = null, CancellationToken ct = default)
    {
        options ??= NetlinkBatchOptions.Default;
        options.Validate();
        var offsets = MessageOffsets(messages);
        var failures = new List<NetlinkBatchFailure>();
        var sends = 0;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var first = 0;
            while (first < offsets.Count - 1)
            {
                ct.ThrowIfCancellationRequested();
                // Take messages while the datagram stays within both limits (always at least one).
                var last = first + 1;
                while (last < offsets.Count - 1 && last - first < options.MaxMessagesPerSend
                       && offsets[last + 1] - offsets[first] <= options.MaxBytesPerSend) last++;
                var count = last - first;

                var firstSeq = _sequence + 1;
                for (var i = 0; i < count; i++)
                {
                    var at = offsets[first + i];
                    var flags = ((NetlinkFlags)messages.ReadUInt16At(at + 6) & ~NetlinkFlags.Ack) | NetlinkFlags.Request;
                    if (i == count - 1) flags |= NetlinkFlags.Ack;
                    messages.WriteUInt16At(at + 6, (ushort)flags);
                    messages.WriteUInt32At(at + 8, unchecked(firstSeq + (uint)i));
                    messages.WriteUInt32At(at + 12, _socket.PortId);
                }
                _sequence = unchecked(_sequence + (uint)count);
                var lastSeq = _sequence;

                var what = $"batch messages {first}..{last - 1}";
                var datagram = messages.Slice(offsets[first], offsets[last] - offsets[first]);
                if (!_socket.TrySend(datagram, what)) Timeout(what);
                sends++;
                AwaitWindow(firstSeq, lastSeq, count, first, describe, failures, what);
                first = last;
            }
        }
        return new NetlinkBatchResult(offsets.Count - 1, sends, failures);
    }

    /// <summary>
    /// The largest datagram the socket sends (a transaction must fit in one; see <see cref="ExecuteTransaction"/>).
    /// </summary>
    public int SendLimit
    {
        get
        {
            lock (_lock)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                return _socket.SendLimit;
            }
        }
    }

    /// <summary>
    /// Sends every message in <paramref name="messages"/> in one datagram, as an nfnetlink batch
    /// (NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END) must be sent: the kernel applies it as one transaction,
    /// inside the send. The messages are numbered consecutively here and stamped with our port id; their
    /// flags stay as written, and the last one that asks for an acknowledgement (NLM_F_ACK) ends the wait.
    /// Every answer is queued before the send returns, errors in order before that acknowledgement (a
    /// failed commit is answered against the batch's first message); the first error fails the transaction.
    /// After an error the answers still queued are read without waiting, so none is left for the next
    /// request; answers to other requests (sequence numbers outside the batch) are dropped.
    /// </summary>
    /// <param name="describe">Names the failed message from its type, for the exception.</param>
    /// <exception cref="NetlinkException">The kernel refused a message; the first refusal.</exception>
    public void ExecuteTransaction(NetlinkBuffer messages, Func<ushort, string> describe, CancellationToken ct = default)
    {
        var offsets = MessageOffsets(messages);
        var count = offsets.Count - 1;
        var ackIndex = -1;
        for (var i = 0; i < count; i++)
            if (((NetlinkFlags)messages.ReadUInt16At(offsets[i] + 6) & NetlinkFlags.Ack) != 0) ackIndex = i;
        if (ackIndex < 0) throw new ArgumentException("no message of the transaction asks for an acknowledgement (NLM_F_ACK): its outcome could not be known", nameof(messages));
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var firstSeq = _sequence + 1;
            for (var i = 0; i < count; i++)
            {
                messages.WriteUInt32At(offsets[i] + 8, unchecked(firstSeq + (uint)i));
                messages.WriteUInt32At(offsets[i] + 12, _socket.PortId);
            }
            _sequence = unchecked(_sequence + (uint)count);
            var ackSeq = unchecked(firstSeq + (uint)ackIndex);
            var what = $"transaction of {count} messages";
            if (messages.Length > _socket.SendLimit)
                throw new NetlinkException(Errno.EMSGSIZE, what, $"{messages.Length} bytes do not fit the socket's send buffer ({_socket.SendLimit} bytes a datagram)");
            if (!_socket.TrySend(messages.WrittenSpan, what)) Timeout(what);

            NetlinkException? failure = null;
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                int length;
                if (failure is null) length = ReceiveOrReset(what);
                else if ((length = _socket.ReceiveQueued(_receive, what)) < 0) throw failure; // every answer read
                var reader = new NetlinkMessageReader(_receive.AsSpan(0, length));
                while (reader.TryRead(out var message))
                {
                    if (unchecked(message.Sequence - firstSeq) >= (uint)count || message.PortId != _socket.PortId)
                    {
                        StaleMessages++;
                        continue;
                    }
                    if (!message.IsError) continue;
                    var error = message.ReadError();
                    if (error.Errno != 0) failure ??= new NetlinkException(error.Errno, describe(error.RequestType), error.KernelMessage);
                    if (message.Sequence == ackSeq)
                    {
                        if (failure is not null) throw failure;
                        return;
                    }
                }
            }
        }
    }

    private void AwaitWindow(uint firstSeq, uint lastSeq, int count, int firstIndex, Func<int, string> describe, List<NetlinkBatchFailure> failures, string what)
    {
        while (true)
        {
            int length;
            try
            {
                length = ReceiveOrReset(what);
            }
            catch (NetlinkException e) when (e.Errno == Errno.ENOBUFS)
            {
                throw new NetlinkException(Errno.ENOBUFS, what,
                    "the receive buffer overflowed and replies were dropped: the outcome of these requests is unknown, read the state back", e);
            }
            var reader = new NetlinkMessageReader(_receive.AsSpan(0, length));
            while (reader.TryRead(out var message))
            {
                var index = unchecked(message.Sequence - firstSeq);
                if (index >= (uint)count || message.PortId != _socket.PortId)
                {
                    StaleMessages++;
                    continue;
                }
                if (!message.IsError) continue; // a reply to a "get" in the batch: not asked for here
                var error = message.ReadError();
                if (error.Errno != 0)
                {
                    var at = firstIndex + (int)index;
                    failures.Add(new NetlinkBatchFailure(at, new NetlinkException(error.Errno, describe(at), error.KernelMessage)));
                }
                if (message.Sequence == lastSeq) return;
            }
        }
    }

    /// <summary>Receives a datagram; on timeout or dropped replies replaces the socket before throwing.</summary>
    private int ReceiveOrReset(string description)
    {
        int length;
        try
        {
            length = _socket.Receive(_receive, description);
        }
        catch (NetlinkException e) when (e.Errno == Errno.ENOBUFS)
        {
            Reset();
            throw;
        }
        if (length < 0) Timeout(description);
        return length;
    }

    private void Timeout(string description)
    {
        Reset();
        throw new NetlinkTimeoutException(description, _socket.Options.ReceiveTimeout);
    }

    /// <summary>
    /// A fresh socket: replies still owed to the old one (a dump the kernel is still running, ACKs of a batch)
    /// die with it instead of confusing the next request, and the kernel forgets the old dump.
    /// </summary>
    private void Reset()
    {
        _socket.Dispose();
        _socket = _open();
        SocketResets++;
    }

    private static void CheckSingleMessage(NetlinkBuffer request)
    {
        if (request.Length < Netlink.HeaderLength || request.ReadUInt32At(0) != (uint)request.Length)
            throw new ArgumentException($"the request buffer must hold exactly one finished message ({request.Length} bytes written)", nameof(request));
    }

    /// <summary>Start offsets of the messages in the buffer, plus its end.</summary>
    private static List<int> MessageOffsets(NetlinkBuffer messages)
    {
        var offsets = new List<int>();
        var at = 0;
        while (at < messages.Length)
        {
            offsets.Add(at);
            var length = messages.Length - at >= Netlink.HeaderLength ? messages.ReadUInt32At(at) : 0u;
            if (length < Netlink.HeaderLength || length > (uint)(messages.Length - at))
                throw new ArgumentException($"message at offset {at} is not finished or is malformed (length {length})", nameof(messages));
            at = Math.Min(at + Netlink.Align((int)length), messages.Length);
        }
        offsets.Add(messages.Length);
        return offsets;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _socket.Dispose();
            ArrayPool<byte>.Shared.Return(_receive);
            _receive = [];
        }
    }
}

/// <summary>How a batch is cut into datagrams.</summary>
public sealed record NetlinkBatchOptions
{
    public static readonly NetlinkBatchOptions Default = new();

    /// <summary>
    /// Messages per datagram. The kernel queues an error reply for each failure before the datagram's ACK is
    /// read, so this bounds what must fit in the receive buffer if everything fails.
    /// </summary>
    public int MaxMessagesPerSend { get; init; } = 256;

    /// <summary>Bytes per datagram; must stay below the socket's send buffer.</summary>
    public int MaxBytesPerSend { get; init; } = 64 << 10;

    internal void Validate()
    {
        if (MaxMessagesPerSend < 1) throw new ArgumentOutOfRangeException(nameof(MaxMessagesPerSend), MaxMessagesPerSend, "at least 1");
        if (MaxBytesPerSend < Netlink.HeaderLength) throw new ArgumentOutOfRangeException(nameof(MaxBytesPerSend), MaxBytesPerSend, "at least one header");
    }
}

/// <summary>One message of a batch the kernel refused; <see cref="Index"/> is its position in the batch.</summary>
public readonly record struct NetlinkBatchFailure(int Index, NetlinkException Error);

/// <summary>What happened to a batch: how many messages, in how many datagrams, and which failed.</summary>
public sealed record NetlinkBatchResult(int Count, int Sends, IReadOnlyList<NetlinkBatchFailure> Failures)
{
    public bool Succeeded => Failures.Count == 0;

    /// <summary>Throws the first failure (the others are in <see cref="Failures"/>).</summary>
    public void ThrowIfFailed()
    {
        if (Failures.Count > 0) throw Failures[0].Error;
    }
}
