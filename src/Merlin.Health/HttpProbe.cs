using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Merlin.Linux;

namespace Merlin.Health;

/// <summary>Receives a check's result on the probe's loop thread: must be quick and must not block.</summary>
internal abstract class ProbeCompletion
{
    /// <summary>Set from any thread (then wake the probe): the loop ends the check at its next pass.</summary>
    public volatile bool Cancelled;

    // The probe's own cache: the slot this completion's checks last used, and for which endpoint (the
    // scheduler passes the same completion and Uri for every run of a check).
    internal object? ProbeSlot;
    internal Uri? ProbeSlotEndpoint;

    public abstract void Completed(ProbeResult result);
}

/// <summary>One check handed to the probe's loop.</summary>
internal readonly record struct ProbeRequest(IPAddress Address, Uri Endpoint, TimeSpan Timeout, ProbeCompletion Completion);

/// <summary>
/// Plain-HTTP checks on non-blocking sockets driven by one event loop of their own: one pre-built
/// <c>GET</c>, the status line parsed, the headers read for the body's framing, the body skipped
/// (Content-Length or chunked), nothing else. Redirects are not followed;
/// <see cref="HealthProbes.IsHealthyStatus"/> decides what passes.
/// <para>
/// The loop is one thread with its own epoll set: it sends every submitted check's request at once,
/// then waits in <c>epoll_wait</c> until an answer arrives or the earliest deadline passes, and parses
/// answers in place. A socket is registered once when its connection opens (level-triggered, for
/// reading; for writing only while a connect or a send is pending), so a check costs one <c>send</c> and
/// one <c>recv</c> — no thread-pool hop, no timer and no allocation per check. Timeouts are a scan of the
/// checks in flight against their deadlines.
/// </para>
/// <para>
/// With <c>reuse</c> (the default) the connection is kept alive between checks, one idle connection per
/// endpoint. A kept connection the server closes (or writes to unasked) while idle is readable, and the
/// loop closes it at once. One that breaks during the exchange (reset, closed before the status line) is
/// retried once on a fresh connection within the same timeout, so a check fails only if a fresh
/// connection fails too — a stopped server (its sockets closed by the kernel) is seen exactly as with a
/// connection per check. A connection is replaced after <see cref="MaxConnectionAge"/> (a random
/// 75–100 % of it), so a server that stops accepting new connections while it still answers an old one
/// is seen within that time. Without <c>reuse</c> each check opens its own connection and says
/// <c>Connection: close</c>. Sockets are made in the network namespace given, when one is.
/// </para>
/// </summary>
internal sealed class HttpProbe : IDisposable
{
    internal const int BufferSize = 4096;
    internal const int MaxDrainBytes = 64 * 1024;
    internal static readonly TimeSpan MaxConnectionAge = TimeSpan.FromSeconds(30);
    internal static readonly TimeSpan DefaultIdleLimit = TimeSpan.FromSeconds(60);
    private readonly long _idleLimit;
    private const int MaxEvents = 256;
    private const ulong WakeToken = ulong.MaxValue;

    private readonly string? _networkNamespace;
    private Microsoft.Win32.SafeHandles.SafeFileHandle? _ownNamespace; // the loop thread's own, opened there
    private readonly bool _reuse;
    private readonly int _epoll, _wake;

    // Submissions, from any thread; the loop swaps the two lists.
    private readonly Lock _lock = new();
    private List<ProbeRequest> _submitted = [], _taking = [];
    private bool _wakePending, _disposed, _reschedule;
    private Thread? _thread;
    private IProbeScheduler[] _schedulers = [];

    // The loop thread's own state.
    private readonly Dictionary<Target, Slot> _slots = new();
    private Connection?[] _byFd = new Connection?[1024];
    private readonly List<Check> _active = [];
    private readonly Stack<Check> _spare = new();
    private long _nextSweep;
    private long _nextDue = long.MaxValue; // when an attached scheduler next has checks due
    private readonly List<ProbeRequest> _due = [];
    private uint _nextId;

    public HttpProbe(string? networkNamespace, bool reuse) : this(networkNamespace, reuse, DefaultIdleLimit)
    {
    }

    /// <param name="idleLimit">How long an endpoint no check used keeps its connection (tests shorten it).</param>
    internal HttpProbe(string? networkNamespace, bool reuse, TimeSpan idleLimit)
    {
        _networkNamespace = networkNamespace;
        _reuse = reuse;
        _idleLimit = Ticks(idleLimit);
        _nextSweep = Stopwatch.GetTimestamp() + _idleLimit;
        _epoll = Epoll.Create(Epoll.Cloexec);
        if (_epoll < 0) throw new IOException($"epoll_create1 failed: errno {Marshal.GetLastPInvokeError()}");
        _wake = EventFd.Create(0, EventFd.Nonblock | EventFd.Cloexec);
        if (_wake < 0 || Epoll.Control(_epoll, Epoll.Add, _wake, Epoll.In, WakeToken) < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (_wake >= 0) FileDescriptor.Close(_wake);
            FileDescriptor.Close(_epoll);
            throw new IOException($"eventfd failed: errno {errno}");
        }
    }

    /// <summary>Connections opened since start (the rest of the checks reused one).</summary>
    public long Connects => Interlocked.Read(ref _connects);

    /// <summary>The loop thread's kernel thread id (/proc/self/task/N) once it runs, else 0: for tests of its CPU use.</summary>
    internal int LoopThreadId => Volatile.Read(ref _loopThreadId);
    private int _loopThreadId;
    private long _connects;

    private readonly record struct Target(IPAddress Address, int Port, string Path);

    /// <summary>One endpoint: its address, its request bytes and at most one idle connection.</summary>
    private sealed class Slot(IPEndPoint remote, byte[] request)
    {
        public readonly IPEndPoint Remote = remote;
        public readonly byte[] Request = request;
        public readonly byte[] SockAddr = SocketAddress(remote);
        public Connection? Idle;
        public long LastUsed;
        public bool Removed;
    }

    /// <summary>A check in flight on the loop.</summary>
    private sealed class Check
    {
        public Slot Slot = null!;
        public ProbeCompletion Completion = null!;
        public TimeSpan Timeout;
        public long Deadline;
        public bool Reused;
        public Connection? Connection;
        public int Index = -1; // in _active
    }

    private enum State { Connecting, Sending, Receiving, Idle }

    /// <summary>A socket, its receive buffer, the check using it (none while idle).</summary>
    private sealed class Connection(int fd, uint id, Slot slot)
    {
        public readonly int Fd = fd;
        public readonly ulong Token = (ulong)id << 32 | (uint)fd; // told apart from a later socket on the same fd
        public readonly Slot Slot = slot;
        // Renewed after 75-100 % of the maximum age: connections opened together (a daemon start) are
        // not all renewed in the same instant.
        public readonly long Expires = Stopwatch.GetTimestamp() + (long)(Ticks(MaxConnectionAge) * (0.75 + 0.25 * Random.Shared.NextDouble()));
        public readonly ResponseReader Reader = new(new byte[BufferSize]);
        public State State;
        public int Sent;
        public bool WatchesOutput;
        public Check? Check;
    }

    /// <summary>Runs one check; the result comes from the loop thread. For callers other than the scheduler.</summary>
    public async Task<ProbeResult> ProbeAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct)
    {
        var pending = new PendingProbe(this);
        using var stop = ct.CanBeCanceled ? ct.UnsafeRegister(static p => ((PendingProbe)p!).Cancel(), pending) : default;
        lock (_lock)
        {
            if (_disposed) pending.Completed(Stopped);
            else
            {
                _submitted.Add(new ProbeRequest(address, endpoint, timeout, pending));
                WakeLocked();
            }
        }
        var result = await pending.Source.Task.ConfigureAwait(false);
        ct.ThrowIfCancellationRequested(); // a check the daemon's stop cut short gives no result
        return result;
    }

    private sealed class PendingProbe(HttpProbe probe) : ProbeCompletion
    {
        public readonly TaskCompletionSource<ProbeResult> Source = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public override void Completed(ProbeResult result) => Source.TrySetResult(result);

        public void Cancel()
        {
            Cancelled = true;
            probe.Wake();
        }
    }

    /// <summary>Hands checks to the loop (one wake-up for all of them); each result goes to its request's completion.</summary>
    public void Submit(List<ProbeRequest> requests)
    {
        if (requests.Count == 0) return;
        lock (_lock)
        {
            if (!_disposed)
            {
                _submitted.AddRange(requests);
                WakeLocked();
                return;
            }
        }
        foreach (var request in requests) request.Completion.Completed(Stopped);
    }

    private static readonly ProbeResult Stopped = new(false, "the probe has stopped");

    /// <summary>From now on the loop asks <paramref name="scheduler"/> for due checks itself (no timer, no other thread).</summary>
    public void Attach(IProbeScheduler scheduler)
    {
        lock (_lock)
        {
            _schedulers = [.. _schedulers, scheduler];
            _reschedule = true;
            WakeLocked();
        }
    }

    public void Detach(IProbeScheduler scheduler)
    {
        lock (_lock) _schedulers = _schedulers.Where(s => s != scheduler).ToArray();
    }

    /// <summary>An attached scheduler's checks changed: ask it again now.</summary>
    public void Reschedule()
    {
        lock (_lock)
        {
            _reschedule = true;
            WakeLocked();
        }
    }

    private void Wake()
    {
        lock (_lock) WakeLocked();
    }

    private unsafe void WakeLocked()
    {
        // Once disposed the eventfd is closed (or about to be) and its number may belong to another file.
        if (_disposed) return;
        if (_thread is null)
        {
            _thread = new Thread(Run) { IsBackground = true, Name = "merlin-http-probe" };
            _thread.Start();
        }
        if (_wakePending) return;
        _wakePending = true;
        EventFd.Signal(_wake);
    }

    private unsafe void Run()
    {
        Volatile.Write(ref _loopThreadId, KernelThread.CurrentId());
        var events = GC.AllocateArray<byte>(MaxEvents * Epoll.EventSize, pinned: true);
        fixed (byte* ev = events)
        {
            while (true)
            {
                if (TakeSubmitted(out var schedulers, out var reschedule)) break;
                var now = Stopwatch.GetTimestamp();
                // The sweep's time is one of the loop's deadlines: it must move on even when nothing is
                // checked, or the wait for it is 0 and the loop spins.
                if (now >= _nextSweep) Sweep(now);
                if (reschedule || now >= _nextDue) Pump(schedulers, now);
                var wait = Expire(now, ev);
                var n = Epoll.Wait(_epoll, ev, MaxEvents, wait);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == Errno.EINTR) continue;
                    break; // the set is gone: nothing more can be checked
                }
                Dispatch(ev, n);
            }
        }
        Shutdown();
    }

    private unsafe void Dispatch(byte* ev, int n)
    {
        for (var i = 0; i < n; i++)
        {
            var flags = *(uint*)(ev + i * Epoll.EventSize);
            var token = *(ulong*)(ev + i * Epoll.EventSize + Epoll.EventDataOffset);
            if (token == WakeToken)
            {
                EventFd.Drain(_wake);
                continue;
            }
            var fd = (int)(uint)token;
            if ((uint)fd < (uint)_byFd.Length && _byFd[fd] is { } c && c.Token == token) OnEvent(c, flags);
        }
    }

    /// <summary>Starts the checks submitted since the last pass; true when the probe is being disposed.</summary>
    private bool TakeSubmitted(out IProbeScheduler[] schedulers, out bool reschedule)
    {
        List<ProbeRequest> taken;
        lock (_lock)
        {
            _wakePending = false;
            schedulers = _schedulers;
            reschedule = _reschedule;
            _reschedule = false;
            if (_disposed) return true;
            if (_submitted.Count == 0) return false;
            taken = _submitted;
            _submitted = _taking;
            _taking = taken;
        }
        var now = Stopwatch.GetTimestamp();
        foreach (var request in taken) Start(request, now);
        taken.Clear();
        return false;
    }

    /// <summary>Starts the attached schedulers' due checks and notes when they next have some.</summary>
    private void Pump(IProbeScheduler[] schedulers, long now)
    {
        _nextDue = long.MaxValue;
        foreach (var scheduler in schedulers)
        {
            TimeSpan wait;
            try
            {
                wait = scheduler.TakeDue(_due);
            }
            catch (Exception e)
            {
                Trace.TraceError($"health check scheduler failed: {e}"); // must not stop the loop
                wait = TimeSpan.FromSeconds(1);
            }
            if (wait != System.Threading.Timeout.InfiniteTimeSpan) _nextDue = Math.Min(_nextDue, now + Ticks(wait));
        }
        if (_due.Count == 0) return;
        foreach (var request in _due) Start(request, now);
        _due.Clear();
    }

    private void Start(in ProbeRequest request, long now)
    {
        var slot = SlotFor(request);
        slot.LastUsed = now;
        var check = _spare.Count > 0 ? _spare.Pop() : new Check();
        check.Slot = slot;
        check.Completion = request.Completion;
        check.Timeout = request.Timeout;
        check.Deadline = now + Ticks(request.Timeout);
        check.Reused = false;
        check.Index = _active.Count;
        _active.Add(check);

        var connection = slot.Idle;
        slot.Idle = null;
        if (connection is not null && now >= connection.Expires)
        {
            Close(connection);
            connection = null;
        }
        if (connection is null)
        {
            Open(check);
            return;
        }
        check.Reused = true;
        Attach(check, connection);
        SendRequest(connection);
    }

    /// <summary>Ends timed-out and cancelled checks; the time to wait for the next deadline (ms, -1: none).</summary>
    private unsafe int Expire(long now, byte* ev)
    {
        var next = Math.Min(_nextSweep, _nextDue);
        // Answers that arrived in time but are not read yet (the loop was busy or not scheduled) count.
        var polled = false;
        foreach (var check in _active)
        {
            if (now < check.Deadline && !check.Completion.Cancelled) continue;
            var n = Epoll.Wait(_epoll, ev, MaxEvents, 0);
            if (n > 0) Dispatch(ev, n);
            polled = true; // it may have read the wake-up: go round once more before waiting
            break;
        }
        for (var i = _active.Count - 1; i >= 0; i--)
        {
            if (i >= _active.Count) continue; // a completion ended several
            var check = _active[i];
            if (check.Completion.Cancelled || now >= check.Deadline)
            {
                if (check.Connection is { } c) Close(c);
                Finish(check, check.Completion.Cancelled ? new ProbeResult(false, "cancelled") : TimedOut(check.Timeout));
                continue;
            }
            if (check.Deadline < next) next = check.Deadline;
        }
        if (polled) return 0;
        var ms = Math.Ceiling((next - now) * 1000.0 / Stopwatch.Frequency);
        return ms <= 0 ? 0 : ms >= int.MaxValue ? -1 : (int)ms;
    }

    private unsafe void Open(Check check)
    {
        Interlocked.Increment(ref _connects);
        var slot = check.Slot;
        var fd = NewSocket(slot.Remote.AddressFamily, out var failure);
        if (fd < 0)
        {
            Finish(check, new ProbeResult(false, failure!));
            return;
        }
        int on = 1;
        PosixSocket.SetOption(fd, PosixSocket.IpProtoTcp, PosixSocket.TcpNoDelay, (byte*)&on, sizeof(int));
        var c = new Connection(fd, ++_nextId, slot);
        if (fd >= _byFd.Length) Array.Resize(ref _byFd, Math.Max(fd + 1, _byFd.Length * 2));
        _byFd[fd] = c;
        Attach(check, c);
        int rc;
        fixed (byte* address = slot.SockAddr) rc = PosixSocket.Connect(fd, address, slot.SockAddr.Length);
        var errno = rc < 0 ? Marshal.GetLastPInvokeError() : 0;
        if (rc < 0 && errno != Errno.EINPROGRESS)
        {
            ConnectFailed(c, errno);
            return;
        }
        c.State = rc == 0 ? State.Sending : State.Connecting;
        c.WatchesOutput = rc != 0;
        if (Epoll.Control(_epoll, Epoll.Add, fd, rc == 0 ? Epoll.In | Epoll.ReadHangUp : Epoll.In | Epoll.Out | Epoll.ReadHangUp, c.Token) < 0)
        {
            ConnectFailed(c, Marshal.GetLastPInvokeError());
            return;
        }
        if (rc == 0) SendRequest(c);
    }

    private int NewSocket(AddressFamily family, out string? failure)
    {
        failure = null;
        var domain = family == AddressFamily.InterNetworkV6 ? PosixSocket.InterNetworkV6 : PosixSocket.InterNetwork;
        (int Fd, int Errno) made;
        try
        {
            if (_networkNamespace is null)
            {
                var fd = PosixSocket.Open(domain, PosixSocket.Stream | PosixSocket.Nonblock | PosixSocket.Cloexec, PosixSocket.IpProtoTcp);
                made = (fd, fd < 0 ? Marshal.GetLastPInvokeError() : 0);
            }
            else
            {
                // On this thread, in a window around socket(2) only: no thread per connection, the loop never waits.
                _ownNamespace ??= NetworkNamespace.OpenOwn();
                var fd = NetworkNamespace.Socket(_networkNamespace, _ownNamespace, domain, PosixSocket.Stream | PosixSocket.Nonblock | PosixSocket.Cloexec, PosixSocket.IpProtoTcp, out var errno);
                made = (fd, errno);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            failure = e.Message; // no such namespace, or not allowed to enter it: the check fails, the loop goes on
            return -1;
        }
        if (made.Fd < 0) failure = ErrorName(made.Errno);
        return made.Fd;
    }

    private static void Attach(Check check, Connection c)
    {
        check.Connection = c;
        c.Check = check;
        c.Sent = 0;
        c.Reader.Reset();
    }

    private unsafe void OnEvent(Connection c, uint flags)
    {
        switch (c.State)
        {
            case State.Idle:
                // Readable while idle: the server closed or reset it, or sent something unasked.
                Close(c);
                break;
            case State.Connecting:
            {
                int error = 0, length = sizeof(int);
                if (PosixSocket.GetOption(c.Fd, PosixSocket.SolSocket, PosixSocket.SoError, (byte*)&error, &length) < 0) error = Marshal.GetLastPInvokeError();
                if (error != 0) ConnectFailed(c, error);
                else if ((flags & Epoll.Out) != 0)
                {
                    c.State = State.Sending;
                    SendRequest(c);
                }
                else if ((flags & (Epoll.Error | Epoll.HangUp)) != 0) ConnectFailed(c, Errno.ECONNRESET);
                break;
            }
            case State.Sending:
                SendRequest(c);
                break;
            case State.Receiving:
                Receive(c);
                break;
        }
    }

    private void ConnectFailed(Connection c, int errno)
    {
        var check = c.Check!;
        Close(c);
        Finish(check, new ProbeResult(false, ErrorName(errno)));
    }

    private unsafe void SendRequest(Connection c)
    {
        var request = c.Slot.Request;
        while (c.Sent < request.Length)
        {
            nint n;
            fixed (byte* p = request) n = PosixSocket.Send(c.Fd, p + c.Sent, (nuint)(request.Length - c.Sent), PosixSocket.MsgNoSignal);
            if (n > 0)
            {
                c.Sent += (int)n;
                continue;
            }
            var errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
            if (errno == Errno.EINTR) continue;
            if (errno == Errno.EAGAIN)
            {
                c.State = State.Sending;
                Watch(c, output: true);
                return;
            }
            Answered(c, new Answer(0, false, true, errno == 0 ? null : ErrorName(errno)));
            return;
        }
        Watch(c, output: false);
        c.State = State.Receiving;
    }

    private void Watch(Connection c, bool output)
    {
        if (c.WatchesOutput == output) return;
        c.WatchesOutput = output;
        Epoll.Control(_epoll, Epoll.Modify, c.Fd, output ? Epoll.In | Epoll.Out | Epoll.ReadHangUp : Epoll.In | Epoll.ReadHangUp, c.Token);
    }

    private unsafe void Receive(Connection c)
    {
        var reader = c.Reader;
        while (true)
        {
            var free = reader.FreeSpace().Span;
            nint n;
            fixed (byte* p = free) n = PosixSocket.Receive(c.Fd, p, (nuint)free.Length, 0);
            if (n <= 0)
            {
                var errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
                if (errno == Errno.EAGAIN) return; // woken for less than a response: wait for the rest
                if (errno == Errno.EINTR) continue;
                // Closed before the status line: a broken connection. After it, the status counts, but the
                // connection is done.
                Answered(c, reader.Status == 0 ? new Answer(0, false, true, errno == 0 ? null : ErrorName(errno)) : new Answer(reader.Status, false, false, null));
                return;
            }
            reader.Received((int)n);
            switch (reader.Advance())
            {
                case ResponseReader.Step.NeedMore:
                    if (n < free.Length) return; // level-triggered: the next part wakes the loop again
                    continue;
                case ResponseReader.Step.Done:
                    Answered(c, new Answer(reader.Status, reader.KeepAlive, false, null));
                    return;
                case ResponseReader.Step.Malformed:
                    Answered(c, new Answer(reader.Status, false, false, reader.Error));
                    return;
                default: // StopReading
                    Answered(c, new Answer(reader.Status, false, false, null));
                    return;
            }
        }
    }

    /// <summary>The answer to one request: its status (0: none), whether the connection can carry another.</summary>
    internal readonly record struct Answer(int Status, bool KeepAlive, bool Broken, string? Error);

    private void Answered(Connection c, Answer answer)
    {
        var check = c.Check!;
        if (answer.Broken && check.Reused)
        {
            // The server closed the kept connection while we sent (an idle timeout, a restart): only a
            // fresh connection's answer counts, within the same deadline.
            Close(c);
            check.Reused = false;
            Open(check);
            return;
        }
        if (answer.Status == 0)
        {
            Close(c);
            Finish(check, new ProbeResult(false, answer.Error ?? "connection closed before an answer"));
            return;
        }
        var slot = c.Slot;
        if (answer.KeepAlive && _reuse && !slot.Removed && slot.Idle is null && !Volatile.Read(ref _disposed))
        {
            c.Check = null;
            check.Connection = null;
            c.State = State.Idle;
            slot.Idle = c;
        }
        else Close(c); // another check of the same endpoint kept its own, or this one cannot carry another
        Finish(check, new ProbeResult(HealthProbes.IsHealthyStatus(answer.Status), StatusDetail(answer.Status)));
    }

    private void Close(Connection c)
    {
        _byFd[c.Fd] = null;
        FileDescriptor.Close(c.Fd); // also leaves the epoll set
        if (c.Slot.Idle == c) c.Slot.Idle = null;
        if (c.Check is { } check) check.Connection = null;
        c.Check = null;
    }

    /// <summary>Takes the check out of flight and hands its result over.</summary>
    private void Finish(Check check, ProbeResult result)
    {
        var last = _active[^1];
        _active[check.Index] = last;
        last.Index = check.Index;
        _active.RemoveAt(_active.Count - 1);
        var completion = check.Completion;
        check.Index = -1;
        check.Slot = null!;
        check.Completion = null!;
        check.Connection = null;
        _spare.Push(check);
        try
        {
            completion.Completed(result);
        }
        catch (Exception e)
        {
            Trace.TraceError($"health check completion failed: {e}"); // must not stop the loop
        }
    }

    private Slot SlotFor(in ProbeRequest r)
    {
        var (address, endpoint, completion) = (r.Address, r.Endpoint, r.Completion);
        if (completion.ProbeSlot is Slot known && !known.Removed && ReferenceEquals(completion.ProbeSlotEndpoint, endpoint) && known.Remote.Address.Equals(address)) return known;
        var target = new Target(address, endpoint.Port, endpoint.PathAndQuery);
        if (!_slots.TryGetValue(target, out var slot))
        {
            var host = address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
            if (target.Port != 80) host += $":{target.Port}";
            var request = Encoding.ASCII.GetBytes(
                $"GET {target.Path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: merlin-health-check\r\nAccept: */*\r\n{(_reuse ? "" : "Connection: close\r\n")}\r\n");
            _slots[target] = slot = new Slot(new IPEndPoint(address, target.Port), request);
        }
        completion.ProbeSlot = slot;
        completion.ProbeSlotEndpoint = endpoint;
        return slot;
    }

    /// <summary>Closes connections of endpoints no longer checked (a removed server), once per idle limit.</summary>
    private void Sweep(long now)
    {
        _nextSweep = now + _idleLimit;
        List<Target>? gone = null;
        foreach (var (target, slot) in _slots)
        {
            if (now - slot.LastUsed < _idleLimit) continue;
            slot.Removed = true;
            (gone ??= []).Add(target);
            if (slot.Idle is { } idle) Close(idle);
        }
        if (gone is null) return;
        foreach (var target in gone) _slots.Remove(target);
    }

    /// <summary>The loop ends: every check in flight or waiting fails, every socket is closed.</summary>
    private void Shutdown()
    {
        lock (_lock)
        {
            _disposed = true;
            (_taking, _submitted) = (_submitted, _taking);
        }
        foreach (var c in _byFd) if (c is not null) Close(c);
        while (_active.Count > 0) Finish(_active[^1], Stopped);
        foreach (var request in _taking) request.Completion.Completed(Stopped);
        _taking.Clear();
        FileDescriptor.Close(_wake);
        FileDescriptor.Close(_epoll);
        _ownNamespace?.Dispose();
    }

    /// <summary>
    /// The name a failed socket call had in the probe before the event loop (the <see cref="SocketError"/>
    /// the runtime maps the errno to), so check details stay the same: "ConnectionRefused", "TimedOut"…
    /// </summary>
    internal static string ErrorName(int errno) => errno switch
    {
        Errno.ECONNREFUSED => nameof(SocketError.ConnectionRefused),
        Errno.ECONNRESET => nameof(SocketError.ConnectionReset),
        Errno.ETIMEDOUT => nameof(SocketError.TimedOut),
        Errno.EHOSTUNREACH => nameof(SocketError.HostUnreachable),
        Errno.ENETUNREACH => nameof(SocketError.NetworkUnreachable),
        Errno.ENETDOWN => nameof(SocketError.NetworkDown),
        Errno.ECONNABORTED => nameof(SocketError.ConnectionAborted),
        Errno.EADDRNOTAVAIL => nameof(SocketError.AddressNotAvailable),
        Errno.EAFNOSUPPORT => nameof(SocketError.AddressFamilyNotSupported),
        Errno.EADDRINUSE => nameof(SocketError.AddressAlreadyInUse),
        Errno.EACCES or Errno.EPERM => nameof(SocketError.AccessDenied),
        Errno.EPIPE => nameof(SocketError.Shutdown),
        Errno.EMFILE or Errno.ENFILE => nameof(SocketError.TooManyOpenSockets),
        Errno.ENOBUFS or Errno.ENOMEM => nameof(SocketError.NoBufferSpaceAvailable),
        _ => $"errno {errno}",
    };

    private static byte[] SocketAddress(IPEndPoint remote)
    {
        if (remote.AddressFamily == AddressFamily.InterNetworkV6)
        {
            var v6 = new byte[28]; // sockaddr_in6: family, port, flow info, address, scope id
            MemoryMarshal.Write(v6, (ushort)PosixSocket.InterNetworkV6);
            BinaryPrimitives.WriteUInt16BigEndian(v6.AsSpan(2), (ushort)remote.Port);
            remote.Address.TryWriteBytes(v6.AsSpan(8, 16), out _);
            MemoryMarshal.Write(v6.AsSpan(24), (uint)remote.Address.ScopeId);
            return v6;
        }
        var v4 = new byte[16]; // sockaddr_in: family, port, address, padding
        MemoryMarshal.Write(v4, (ushort)PosixSocket.InterNetwork);
        BinaryPrimitives.WriteUInt16BigEndian(v4.AsSpan(2), (ushort)remote.Port);
        remote.Address.TryWriteBytes(v4.AsSpan(4, 4), out _);
        return v4;
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
        Thread? thread;
        lock (_lock)
        {
            if (_disposed) return;
            thread = _thread;
            if (thread is not null) WakeLocked(); // before _disposed: the loop must wake to see it
            _disposed = true;
        }
        if (thread is null)
        {
            FileDescriptor.Close(_wake);
            FileDescriptor.Close(_epoll);
            return;
        }
        if (Thread.CurrentThread != thread) thread.Join();
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
                    if (Status is >= 100 and < 200 and not 101)
                    {
                        // An interim answer (100 Continue, 103 Early Hints): the final one follows.
                        _chunked = _close = _keepAliveHeader = false;
                        _remaining = -1;
                        Status = 0;
                        _phase = Phase.StatusLine;
                        break;
                    }
                    if (Status is 101 or 204 or 304) return Done(); // no body
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
