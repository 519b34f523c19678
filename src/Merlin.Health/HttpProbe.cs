using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading.Tasks.Sources;
using Merlin.Netlink;

namespace Merlin.Health;

/// <summary>
/// Plain-HTTP checks on a raw socket: one pre-built <c>GET</c>, the status line parsed, the headers read
/// for the body's framing, the body skipped (Content-Length or chunked), nothing else. Redirects are not
/// followed; <see cref="HealthProbes.IsHealthyStatus"/> decides what passes.
/// <para>
/// With <c>reuse</c> (the default) the connection is kept alive between checks, one idle connection per
/// endpoint. A reused connection the server has closed is replaced before the request; one that breaks
/// during the exchange (reset, closed before the status line) is retried once on a fresh connection within
/// the same timeout, so a check fails only if a fresh connection fails too — a stopped server (its
/// sockets closed by the kernel) is seen exactly as with a connection per check. A connection is
/// replaced after <see cref="MaxConnectionAge"/>, so a server that stops accepting new connections while
/// it still answers an old one is seen within that time.
/// </para>
/// <para>
/// The timeout is a timer that closes the socket: the pending operation then completes with an error
/// code, so a check that times out or is refused throws no exception.
/// </para>
/// </summary>
internal sealed class HttpProbe : IDisposable
{
    internal const int BufferSize = 4096;
    internal const int MaxDrainBytes = 64 * 1024;
    internal static readonly TimeSpan MaxConnectionAge = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan IdleLimit = TimeSpan.FromSeconds(60);

    private readonly string? _networkNamespace;
    private readonly bool _reuse;
    private readonly ConcurrentDictionary<Target, Slot> _slots = new();
    // The scheduler passes the same Uri for every run of a check: finding its slot by reference skips
    // hashing the address and path on each check.
    private readonly ConditionalWeakTable<Uri, Slot> _byEndpoint = new();
    private long _nextSweep;
    private int _disposed;

    public HttpProbe(string? networkNamespace, bool reuse)
    {
        _networkNamespace = networkNamespace;
        _reuse = reuse;
        _nextSweep = Stopwatch.GetTimestamp() + Ticks(IdleLimit);
    }

    /// <summary>Connections opened since start (the rest of the checks reused one).</summary>
    public long Connects => Interlocked.Read(ref _connects);
    private long _connects;

    private readonly record struct Target(IPAddress Address, int Port, string Path);

    /// <summary>One endpoint: its request bytes and at most one idle connection.</summary>
    private sealed class Slot(IPEndPoint remote, byte[] request)
    {
        public readonly IPEndPoint Remote = remote;
        public readonly byte[] Request = request;
        public Connection? Idle;
        public long LastUsed;
        public volatile bool Removed;
    }

    public async Task<ProbeResult> ProbeAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct)
    {
        var now = Stopwatch.GetTimestamp();
        if (now >= Volatile.Read(ref _nextSweep)) Sweep(now);
        var slot = SlotFor(address, endpoint);
        Volatile.Write(ref slot.LastUsed, now);

        var connection = _reuse ? Interlocked.Exchange(ref slot.Idle, null) : null;
        if (connection is not null && (now >= connection.Expires || connection.ClosedByPeer()))
        {
            connection.Dispose();
            connection = null;
        }
        var reused = connection is not null;
        using var deadline = new Deadline(timeout);
        using var stop = ct.CanBeCanceled ? ct.UnsafeRegister(static d => ((Deadline)d!).Cancel(), deadline) : default;
        connection ??= await ConnectAsync(slot, deadline);
        if (connection is null) return Ended(deadline.Fired ? TimedOut(timeout) : deadline.Failure, ct);

        var answer = await ExchangeAsync(connection, slot.Request, deadline);
        if (answer.Broken && reused && !deadline.Fired)
        {
            // The server closed the kept connection while we sent (an idle timeout, a restart): only a
            // fresh connection's answer counts.
            connection.Dispose();
            connection = await ConnectAsync(slot, deadline);
            if (connection is null) return Ended(deadline.Fired ? TimedOut(timeout) : deadline.Failure, ct);
            answer = await ExchangeAsync(connection, slot.Request, deadline);
        }
        var inTime = deadline.Finish();
        if (answer.Status == 0)
        {
            connection.Dispose();
            return Ended(!inTime ? TimedOut(timeout) : new ProbeResult(false, answer.Error ?? "connection closed before an answer"), ct);
        }
        if (inTime && answer.KeepAlive && _reuse && Volatile.Read(ref _disposed) == 0) Return(slot, connection);
        else connection.Dispose();
        return Ended(new ProbeResult(HealthProbes.IsHealthyStatus(answer.Status), StatusDetail(answer.Status)), ct);
    }

    /// <summary>A check the daemon's stop cut short gives no result.</summary>
    private static ProbeResult Ended(ProbeResult result, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        return result;
    }

    private Slot SlotFor(IPAddress address, Uri endpoint)
    {
        if (_byEndpoint.TryGetValue(endpoint, out var known) && !known.Removed && known.Remote.Address.Equals(address)) return known;
        var slot = SlotFor(new Target(address, endpoint.Port, endpoint.PathAndQuery));
        _byEndpoint.AddOrUpdate(endpoint, slot);
        return slot;
    }

    private Slot SlotFor(Target target)
    {
        if (_slots.TryGetValue(target, out var slot)) return slot;
        var (address, port) = (target.Address, target.Port);
        var host = address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
        if (port != 80) host += $":{port}";
        var request = Encoding.ASCII.GetBytes(
            $"GET {target.Path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: merlin-health-check\r\nAccept: */*\r\n{(_reuse ? "" : "Connection: close\r\n")}\r\n");
        return _slots.GetOrAdd(target, new Slot(new IPEndPoint(address, port), request));
    }

    private static void Return(Slot slot, Connection connection)
    {
        if (Interlocked.CompareExchange(ref slot.Idle, connection, null) is not null)
        {
            connection.Dispose(); // another check of the same endpoint kept its own
            return;
        }
        // A sweep may have dropped the slot meanwhile: then nobody would ever close this connection.
        if (slot.Removed && Interlocked.CompareExchange(ref slot.Idle, null, connection) == connection) connection.Dispose();
    }

    /// <summary>Closes connections of endpoints no longer checked (a removed server), at most every <see cref="IdleLimit"/>.</summary>
    private void Sweep(long now)
    {
        var due = Volatile.Read(ref _nextSweep);
        if (now < due || Interlocked.CompareExchange(ref _nextSweep, now + Ticks(IdleLimit), due) != due) return;
        foreach (var (target, slot) in _slots)
        {
            if (now - Volatile.Read(ref slot.LastUsed) < Ticks(IdleLimit)) continue;
            slot.Removed = true;
            _slots.TryRemove(target, out _);
            Interlocked.Exchange(ref slot.Idle, null)?.Dispose();
        }
    }

    private async ValueTask<Connection?> ConnectAsync(Slot slot, Deadline deadline)
    {
        Interlocked.Increment(ref _connects);
        Socket socket;
        try
        {
            socket = NetworkNamespace.Run(_networkNamespace, () => new Socket(slot.Remote.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
            socket.NoDelay = true;
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            deadline.Failure = new ProbeResult(false, e is SocketException s ? s.SocketErrorCode.ToString() : e.Message);
            return null;
        }
        var connection = new Connection(socket);
        deadline.Watch(connection);
        var error = await connection.Operation.ConnectAsync(socket, slot.Remote);
        if (error == SocketError.Success) return connection;
        connection.Dispose();
        deadline.Failure = new ProbeResult(false, error.ToString());
        return null;
    }

    /// <summary>The answer to one request: its status (0: none), whether the connection can carry another.</summary>
    internal readonly record struct Answer(int Status, bool KeepAlive, bool Broken, string? Error);

    private static async ValueTask<Answer> ExchangeAsync(Connection c, byte[] request, Deadline deadline)
    {
        deadline.Watch(c);
        var op = c.Operation;
        var sent = 0;
        while (sent < request.Length)
        {
            var error = await op.SendAsync(c.Socket, request.AsMemory(sent));
            if (error != SocketError.Success || op.BytesTransferred == 0) return new Answer(0, false, true, error.ToString());
            sent += op.BytesTransferred;
        }
        var reader = c.Reader;
        reader.Reset();
        while (true)
        {
            var step = reader.Advance();
            if (step == ResponseReader.Step.Done) return new Answer(reader.Status, reader.KeepAlive, false, null);
            if (step == ResponseReader.Step.Malformed) return new Answer(reader.Status, false, false, reader.Error);
            if (step == ResponseReader.Step.StopReading) return new Answer(reader.Status, false, false, null);
            // NeedMore: read into the free end of the buffer.
            var free = reader.FreeSpace();
            var error = await op.ReceiveAsync(c.Socket, free);
            if (error != SocketError.Success || op.BytesTransferred == 0)
            {
                // Closed before the status line: a broken connection. After it, the status counts, but the
                // connection is done.
                return reader.Status == 0 ? new Answer(0, false, true, error == SocketError.Success ? null : error.ToString()) : new Answer(reader.Status, false, false, null);
            }
            reader.Received(op.BytesTransferred);
        }
    }

    private static readonly string?[] StatusDetails = new string?[600];

    private static string StatusDetail(int status)
    {
        if ((uint)status >= StatusDetails.Length) return $"HTTP {status}";
        return StatusDetails[status] ??= $"HTTP {status}";
    }

    private static ProbeResult TimedOut(TimeSpan timeout) => new(false, $"no answer within {timeout.TotalMilliseconds:0} ms");

    private static long Ticks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        foreach (var slot in _slots.Values)
        {
            slot.Removed = true;
            Interlocked.Exchange(ref slot.Idle, null)?.Dispose();
        }
        _slots.Clear();
    }

    /// <summary>
    /// A check's timeout: a timer that closes the connection the check is using, so its pending operation
    /// ends with an error code instead of an exception.
    /// </summary>
    private sealed class Deadline : IDisposable
    {
        private const int Running = 0, Expired = 1, Finished = 2;
        private readonly Timer _timer;
        private Connection? _connection;
        private int _state;

        public Deadline(TimeSpan timeout) =>
            _timer = new Timer(static s => ((Deadline)s!).Fire(), this, timeout, Timeout.InfiniteTimeSpan);

        /// <summary>Why the last connect failed, when it did not time out.</summary>
        public ProbeResult Failure;

        public bool Fired => Volatile.Read(ref _state) == Expired;

        public void Watch(Connection connection)
        {
            Volatile.Write(ref _connection, connection);
            if (Fired) connection.Abort();
        }

        /// <summary>The daemon stops: end the check now.</summary>
        public void Cancel() => Fire();

        private void Fire()
        {
            if (Interlocked.CompareExchange(ref _state, Expired, Running) == Running) Volatile.Read(ref _connection)?.Abort();
        }

        /// <summary>Stops the timer; false if it had already fired (the connection is closed).</summary>
        public bool Finish() => Interlocked.CompareExchange(ref _state, Finished, Running) != Expired;

        public void Dispose()
        {
            Finish();
            _timer.Dispose();
        }
    }

    /// <summary>A socket, its receive buffer and its one reusable socket operation.</summary>
    private sealed class Connection(Socket socket) : IDisposable
    {
        public readonly Socket Socket = socket;
        // Renewed after 75-100 % of the maximum age: connections opened together (a daemon start) are
        // not all renewed in the same instant.
        public readonly long Expires = Stopwatch.GetTimestamp() + (long)(Ticks(MaxConnectionAge) * (0.75 + 0.25 * Random.Shared.NextDouble()));
        public readonly ResponseReader Reader = new(new byte[BufferSize]);
        public readonly SocketOperation Operation = new();
        private int _closed;

        /// <summary>True when the server has closed (or reset) the idle connection, or sent something unasked.</summary>
        public bool ClosedByPeer()
        {
            try
            {
                return Socket.Poll(0, SelectMode.SelectRead); // readable while idle: EOF, an error or stray bytes
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return true;
            }
        }

        /// <summary>Closes the socket from the timer: a pending connect, send or receive completes with an error.</summary>
        public void Abort() => Socket.Dispose();

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 1) return;
            Socket.Dispose();
            Operation.Dispose();
        }
    }

    /// <summary>One reusable socket operation, awaited as a <see cref="ValueTask{SocketError}"/>: failures are codes, not exceptions.</summary>
    private sealed class SocketOperation : SocketAsyncEventArgs, IValueTaskSource<SocketError>
    {
        private ManualResetValueTaskSourceCore<SocketError> _core;

        public SocketOperation() : base(unsafeSuppressExecutionContextFlow: true) { }

        public ValueTask<SocketError> ConnectAsync(Socket socket, EndPoint remote)
        {
            SetBuffer(Memory<byte>.Empty);
            RemoteEndPoint = remote;
            return Start(socket, static (s, e) => s.ConnectAsync(e));
        }

        public ValueTask<SocketError> SendAsync(Socket socket, ReadOnlyMemory<byte> data)
        {
            SetBuffer(MemoryMarshal.AsMemory(data));
            return Start(socket, static (s, e) => s.SendAsync(e));
        }

        public ValueTask<SocketError> ReceiveAsync(Socket socket, Memory<byte> buffer)
        {
            SetBuffer(buffer);
            return Start(socket, static (s, e) => s.ReceiveAsync(e));
        }

        private ValueTask<SocketError> Start(Socket socket, Func<Socket, SocketAsyncEventArgs, bool> start)
        {
            _core.Reset();
            try
            {
                if (start(socket, this)) return new ValueTask<SocketError>(this, _core.Version);
            }
            catch (ObjectDisposedException)
            {
                return new ValueTask<SocketError>(SocketError.OperationAborted); // the timer closed it between two operations
            }
            return new ValueTask<SocketError>(SocketError);
        }

        protected override void OnCompleted(SocketAsyncEventArgs e) => _core.SetResult(e.SocketError);

        public SocketError GetResult(short token) => _core.GetResult(token);
        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);
        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }
}

/// <summary>
/// Reads one HTTP/1.x response from a buffer filled by the caller: the status line, the headers that frame
/// the body (Content-Length, Transfer-Encoding: chunked, Connection), then skips the body so the
/// connection can carry the next request. A body it cannot skip cheaply (delimited by the connection's
/// close, or larger than <see cref="HttpProbe.MaxDrainBytes"/>) ends the reading: the status still counts,
/// the connection is not kept.
/// </summary>
internal sealed class ResponseReader(byte[] buffer)
{
    public enum Step { NeedMore, Done, StopReading, Malformed }
    private enum Phase { StatusLine, Headers, Body, ChunkSize, ChunkData, ChunkEnd, Trailers }

    private readonly byte[] _buffer = buffer;
    private int _start, _end;
    private Phase _phase;
    private long _remaining = -1; // body bytes or chunk bytes left
    private long _drained;
    private bool _chunked, _close, _http10, _keepAliveHeader;

    public int Status { get; private set; }
    public string? Error { get; private set; }

    /// <summary>Ready for the next response on the same connection (the last one was read to its end).</summary>
    public void Reset()
    {
        _start = _end = 0;
        _phase = Phase.StatusLine;
        _remaining = -1;
        _drained = 0;
        _chunked = _close = _http10 = _keepAliveHeader = false;
        Status = 0;
        Error = null;
    }
    public bool KeepAlive => !_close && (!_http10 || _keepAliveHeader);

    public Memory<byte> FreeSpace()
    {
        if (_start > 0 && (_start == _end || _end == _buffer.Length))
        {
            // Move what is unread to the front.
            _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
            _end -= _start;
            _start = 0;
        }
        return _buffer.AsMemory(_end);
    }

    public void Received(int count) => _end += count;

    public Step Advance()
    {
        while (true)
        {
            switch (_phase)
            {
                case Phase.StatusLine:
                {
                    if (!TryLine(out var line)) return LineTooLong("status line");
                    // HTTP/1.x SP 3DIGIT [SP reason]
                    if (line.Length < 12 || !line.StartsWith("HTTP/1."u8) || line[8] != (byte)' ' || !Digits(line.Slice(9, 3), out var status) || (line.Length > 12 && line[12] != (byte)' '))
                        return Malformed("not an HTTP/1 status line");
                    Status = status;
                    _http10 = line[7] == (byte)'0';
                    _phase = Phase.Headers;
                    break;
                }
                case Phase.Headers:
                {
                    if (!TryLine(out var line)) return LineTooLong("header");
                    if (line.Length > 0)
                    {
                        Header(line);
                        break;
                    }
                    if (Status is >= 100 and < 200 || Status is 204 or 304) return Done(); // no body
                    if (_chunked) { _phase = Phase.ChunkSize; break; }
                    if (_remaining < 0) return StopReading(); // read until close: the connection is not reusable
                    if (_remaining > HttpProbe.MaxDrainBytes) return StopReading();
                    _phase = Phase.Body;
                    break;
                }
                case Phase.Body:
                    if (!Skip()) return Step.NeedMore;
                    return Done();
                case Phase.ChunkSize:
                {
                    if (!TryLine(out var line)) return LineTooLong("chunk size");
                    var semicolon = line.IndexOf((byte)';');
                    if (semicolon >= 0) line = line[..semicolon];
                    line = line.Trim((byte)' ');
                    if (!Hex(line, out var size)) return Malformed("bad chunk size");
                    if (size == 0) { _phase = Phase.Trailers; break; }
                    if (_drained + size > HttpProbe.MaxDrainBytes) return StopReading();
                    _remaining = size;
                    _phase = Phase.ChunkData;
                    break;
                }
                case Phase.ChunkData:
                    if (!Skip()) return Step.NeedMore;
                    _phase = Phase.ChunkEnd;
                    break;
                case Phase.ChunkEnd:
                {
                    if (!TryLine(out var line)) return LineTooLong("chunk end");
                    if (line.Length != 0) return Malformed("chunk not followed by CRLF");
                    _phase = Phase.ChunkSize;
                    break;
                }
                case Phase.Trailers:
                {
                    if (!TryLine(out var line)) return LineTooLong("trailer");
                    if (line.Length == 0) return Done();
                    break;
                }
            }
        }

        Step LineTooLong(string what) =>
            _start == 0 && _end == _buffer.Length ? (Status == 0 ? Malformed($"{what} longer than {_buffer.Length} bytes") : StopReading()) : Step.NeedMore;
    }

    private Step Done() => _start == _end ? Step.Done : StopReading(); // bytes after the response: do not reuse
    private Step StopReading() { _close = true; return Step.StopReading; }
    private Step Malformed(string error) { _close = true; Error = error; return Step.Malformed; }

    /// <summary>Consumes up to <c>_remaining</c> buffered bytes; true when none are left.</summary>
    private bool Skip()
    {
        var take = (int)Math.Min(_remaining, _end - _start);
        _start += take;
        _remaining -= take;
        _drained += take;
        if (_start == _end) _start = _end = 0;
        return _remaining == 0;
    }

    /// <summary>The next CRLF-terminated line (without it), or false until it is all in the buffer.</summary>
    private bool TryLine(out ReadOnlySpan<byte> line)
    {
        var unread = _buffer.AsSpan(_start, _end - _start);
        var lf = unread.IndexOf((byte)'\n');
        if (lf < 0)
        {
            line = default;
            return false;
        }
        line = unread[..(lf > 0 && unread[lf - 1] == (byte)'\r' ? lf - 1 : lf)];
        _start += lf + 1;
        return true;
    }

    private void Header(ReadOnlySpan<byte> line)
    {
        var colon = line.IndexOf((byte)':');
        if (colon <= 0) return;
        var name = line[..colon];
        var value = line[(colon + 1)..].Trim((byte)' ').Trim((byte)'\t');
        if (name.EqualsIgnoreCase("content-length"u8))
        {
            if (Number(value, out var length)) _remaining = length;
            else _close = true; // unparseable framing: use the status, drop the connection
        }
        else if (name.EqualsIgnoreCase("transfer-encoding"u8))
        {
            _chunked = value.EndsWithIgnoreCase("chunked"u8);
            if (!_chunked) _close = true;
        }
        else if (name.EqualsIgnoreCase("connection"u8))
        {
            if (value.ContainsIgnoreCase("close"u8)) _close = true;
            if (value.ContainsIgnoreCase("keep-alive"u8)) _keepAliveHeader = true;
        }
    }

    private static bool Digits(ReadOnlySpan<byte> s, out int value)
    {
        value = 0;
        foreach (var b in s)
        {
            if (b is < (byte)'0' or > (byte)'9') return false;
            value = value * 10 + (b - '0');
        }
        return s.Length > 0;
    }

    private static bool Number(ReadOnlySpan<byte> s, out long value)
    {
        value = 0;
        if (s.Length is 0 or > 18) return false;
        foreach (var b in s)
        {
            if (b is < (byte)'0' or > (byte)'9') return false;
            value = value * 10 + (b - '0');
        }
        return true;
    }

    private static bool Hex(ReadOnlySpan<byte> s, out long value)
    {
        value = 0;
        if (s.Length is 0 or > 15) return false;
        foreach (var b in s)
        {
            int d = b switch
            {
                >= (byte)'0' and <= (byte)'9' => b - '0',
                >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
                >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
                _ => -1,
            };
            if (d < 0) return false;
            value = value * 16 + d;
        }
        return true;
    }
}

internal static class AsciiSpans
{
    public static bool EqualsIgnoreCase(this ReadOnlySpan<byte> s, ReadOnlySpan<byte> lower) => System.Text.Ascii.EqualsIgnoreCase(s, lower);

    public static bool EndsWithIgnoreCase(this ReadOnlySpan<byte> s, ReadOnlySpan<byte> lower) =>
        s.Length >= lower.Length && System.Text.Ascii.EqualsIgnoreCase(s[^lower.Length..], lower);

    public static bool ContainsIgnoreCase(this ReadOnlySpan<byte> s, ReadOnlySpan<byte> lower)
    {
        for (var i = 0; i + lower.Length <= s.Length; i++)
            if (System.Text.Ascii.EqualsIgnoreCase(s.Slice(i, lower.Length), lower)) return true;
        return false;
    }
}
