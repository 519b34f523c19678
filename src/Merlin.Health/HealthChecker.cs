using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Microsoft.Extensions.Logging;

namespace Merlin.Health;

/// <summary>The health of one real server, as <c>meradm list</c> and <c>/metrics</c> show it.</summary>
/// <param name="LastCheck">When the last check's result came in; null before the first.</param>
public sealed record ServerHealthReport(ServiceKey Service, RealServerKey Server, HealthVerdict Verdict, string Detail, DateTimeOffset? Since, DateTimeOffset? LastCheck = null);

/// <summary>
/// Runs every real server's health check on one scheduler over a <see cref="TimeProvider"/> (no thread or
/// timer per check). A check is identified by the server's address, its endpoint, period, timeout and
/// thresholds: a server shared by several services is checked once, and they all get its verdict.
/// <para>
/// Verdicts: no verdict until the first result; then Up on a success, Down after <c>down_threshold</c>
/// failures in a row. Up → Down after <c>down_threshold</c> failures in a row; Down → Up after
/// <c>up_threshold</c> successes in a row. Each transition is logged once and raises <see cref="Changed"/>.
/// </para>
/// </summary>
public sealed partial class HealthChecker : IServerHealth, IAsyncDisposable, IProbeScheduler
{
    private readonly IHealthProbe _probe;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly Dictionary<CheckKey, CheckState> _checks = new();
    private readonly Dictionary<(ServiceKey, RealServerKey), CheckKey> _byServer = new();
    // Entries are the state they were queued for: a check removed and added again gets a new state, and
    // the old entry (its Generation -1) must not keep a second rhythm going for it.
    private readonly PriorityQueue<CheckState, long> _due = new();
    private readonly CancellationTokenSource _stop = new();
    private TaskCompletionSource _wake = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IReadOnlyList<HealthTarget>? _tracked;
    private Task? _loop;
    // The probe whose thread drives this scheduler (on the system clock, with a probe that batches).
    private IBatchProbe? _driver;
    private CancellationToken _stopping;

    public HealthChecker(IHealthProbe probe, TimeProvider time, ILogger<HealthChecker> logger)
    {
        _probe = probe;
        _time = time;
        _logger = logger;
    }

    public event Action? Changed;

    public long Generation => Interlocked.Read(ref _generation);
    private long _generation;

    /// <summary>Checks completed since start, by result.</summary>
    public long Succeeded => Interlocked.Read(ref _succeeded);
    public long FailedChecks => Interlocked.Read(ref _failed);
    private long _succeeded, _failed;

    /// <summary>
    /// Signs of a checker falling behind: checks not started when due because their previous run had not finished,
    /// and the time checks started after they were due, summed (a few ms each when keeping up).
    /// </summary>
    public long Skipped => Interlocked.Read(ref _skipped);
    public TimeSpan Delay => TimeSpan.FromSeconds((double)Interlocked.Read(ref _delayTicks) / _time.TimestampFrequency);
    private long _skipped, _delayTicks;

    private readonly record struct CheckKey(IPAddress Address, string Endpoint, TimeSpan Period, TimeSpan Timeout, uint Up, uint Down);

    /// <summary>A check's state; also where a batching probe delivers its results.</summary>
    private sealed class CheckState(Uri endpoint, CheckKey key, HealthChecker checker) : ProbeCompletion
    {
        public Uri Endpoint { get; } = endpoint;
        public readonly CheckKey Key = key;
        public long PeriodTicks = (long)(key.Period.TotalSeconds * checker._time.TimestampFrequency);

        public override void Completed(ProbeResult result) => checker.Record(Key, this, result, checker._stop.IsCancellationRequested);

        // Verdict, counts, detail and since change under lock (this); Running is set by the scheduler and
        // cleared by the check; Generation is set to -1 (under the checker's lock) when the check is removed.
        public HealthVerdict Verdict = HealthVerdict.Unknown;
        public int Successes, Failures;
        public string Detail = "not checked yet";
        public DateTimeOffset? Since;
        public DateTimeOffset? LastCheck;
        public bool Running;
        public long Generation; // bumps when removed, so queued entries of a removed check are ignored
    }

    /// <summary>
    /// Starts checking. On the system clock, with a probe that batches (<see cref="HealthProbes"/>), the
    /// probe's own thread drives the schedule — it takes due checks when they are due, with no timer or
    /// thread-pool work per wake-up; otherwise a loop of this checker's own does, on its TimeProvider.
    /// </summary>
    public void Start()
    {
        lock (_lock)
        {
            if (_loop is not null || _driver is not null) return;
            _stopping = _stop.Token;
            if (_probe is IBatchProbe batch && ReferenceEquals(_time, TimeProvider.System))
            {
                _driver = batch;
                batch.Attach(this);
                return;
            }
            _loop = Task.Run(() => RunAsync(_stop.Token));
        }
    }

    public void Track(IReadOnlyList<HealthTarget> targets)
    {
        lock (_lock)
        {
            if (ReferenceEquals(targets, _tracked)) return;
            _tracked = targets;
            var wanted = new Dictionary<(ServiceKey, RealServerKey), CheckKey>(targets.Count);
            foreach (var t in targets)
            {
                var c = t.Check;
                wanted[(t.Service, t.Server)] = new CheckKey(t.Server.Address, c.Endpoint!.AbsoluteUri, c.Period, c.Timeout, c.UpThreshold, c.DownThreshold);
            }
            var keys = wanted.Values.ToHashSet();
            foreach (var gone in _checks.Keys.Where(k => !keys.Contains(k)).ToList())
            {
                _checks[gone].Generation = -1;
                _checks.Remove(gone);
            }
            var now = _time.GetTimestamp();
            foreach (var t in targets)
            {
                var key = wanted[(t.Service, t.Server)];
                if (_checks.ContainsKey(key)) continue;
                var added = new CheckState(t.Check.Endpoint!, key, this);
                _checks[key] = added;
                _due.Enqueue(added, now); // a new check runs at once
            }
            _byServer.Clear();
            foreach (var (server, key) in wanted) _byServer[server] = key;
            Interlocked.Increment(ref _generation);
        }
        Wake();
    }

    public HealthVerdict Verdict(ServiceKey service, RealServerKey server)
    {
        lock (_lock)
            return _byServer.TryGetValue((service, server), out var key) && _checks.TryGetValue(key, out var s) ? s.Verdict : HealthVerdict.Unknown;
    }

    /// <summary>Every checked server's verdict, with the last result and since when it holds.</summary>
    public IReadOnlyList<ServerHealthReport> Report()
    {
        lock (_lock)
        {
            return _byServer
                .Where(kv => _checks.ContainsKey(kv.Value))
                .Select(kv => { var s = _checks[kv.Value]; lock (s) return new ServerHealthReport(kv.Key.Item1, kv.Key.Item2, s.Verdict, s.Detail, s.Since, s.LastCheck); })
                .ToList();
        }
    }

    /// <summary>
    /// Checks due within this much of now start together: at thousands of checks a second the scheduler wakes
    /// once per window, not once per check (a check starts at most this much early; its rhythm is kept).
    /// </summary>
    internal static readonly TimeSpan BatchWindow = TimeSpan.FromMilliseconds(5);

    private async Task RunAsync(CancellationToken ct)
    {
        // One timer, re-armed for the next due check; a Track or the stop wakes the loop as well.
        using var timer = _time.CreateTimer(static s => ((HealthChecker)s!).Wake(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        using var stop = ct.UnsafeRegister(static s => ((HealthChecker)s!).Wake(), this);
        var start = new List<(CheckKey Key, CheckState State)>();
        // Checks the probe takes in batches go to it together, once per wake-up; their results come back
        // on the probe's thread through CheckState.Completed — no task per check.
        var batchProbe = _probe as IBatchProbe;
        var batch = new List<ProbeRequest>();
        while (!ct.IsCancellationRequested)
        {
            TimeSpan wait;
            Task woken;
            lock (_lock)
            {
                if (_wake.Task.IsCompleted) _wake = new(TaskCreationOptions.RunContinuationsAsynchronously);
                woken = _wake.Task;
                wait = TakeDueLocked(start);
            }
            foreach (var (key, state) in start)
            {
                if (batchProbe is not null && batchProbe.Batches(state.Endpoint)) batch.Add(new ProbeRequest(key.Address, state.Endpoint, key.Timeout, state));
                else _ = CheckAsync(key, state, ct);
            }
            start.Clear();
            if (batch.Count > 0)
            {
                batchProbe!.Submit(batch);
                batch.Clear();
            }
            // Timers count whole milliseconds: a wait of 0.3 ms would fire at once and spin this loop
            // until the check is due, so round up (a check starts at most 1 ms late).
            if (wait != Timeout.InfiniteTimeSpan) wait = TimeSpan.FromMilliseconds(Math.Ceiling(wait.TotalMilliseconds));
            timer.Change(wait, Timeout.InfiniteTimeSpan);
            await woken.ConfigureAwait(false);
        }
    }

    /// <summary>Takes the checks due within <see cref="BatchWindow"/> of now; returns the wait until the next one.</summary>
    private TimeSpan TakeDueLocked(List<(CheckKey Key, CheckState State)> start)
    {
        var window = (long)(BatchWindow.TotalSeconds * _time.TimestampFrequency);
        var now = _time.GetTimestamp();
        while (_due.TryPeek(out var state, out var at))
        {
            if (state.Generation < 0)
            {
                _due.Dequeue(); // removed (and perhaps added again, with its own entry)
                continue;
            }
            if (at - now > window) return _time.GetElapsedTime(now, at);
            // The next run is a period after this one was due, so checks keep their rhythm.
            _due.DequeueEnqueue(state, at + state.PeriodTicks);
            if (Volatile.Read(ref state.Running))
            {
                Interlocked.Increment(ref _skipped); // the last one has not finished: skip, never pile up
                continue;
            }
            if (now > at) Interlocked.Add(ref _delayTicks, now - at);
            state.Running = true;
            start.Add((state.Key, state));
        }
        return Timeout.InfiniteTimeSpan;
    }

    /// <summary>On the driving probe's thread: its checks go into <paramref name="requests"/>, others start on the thread pool.</summary>
    TimeSpan IProbeScheduler.TakeDue(List<ProbeRequest> requests)
    {
        if (_stopping.IsCancellationRequested) return Timeout.InfiniteTimeSpan;
        TimeSpan wait;
        var start = _taken;
        lock (_lock) wait = TakeDueLocked(start);
        foreach (var (key, state) in start)
        {
            if (_driver!.Batches(state.Endpoint)) requests.Add(new ProbeRequest(key.Address, state.Endpoint, key.Timeout, state));
            else ThreadPool.UnsafeQueueUserWorkItem(static s => _ = s.Checker.CheckAsync(s.Key, s.State, s.Checker._stopping), (Checker: this, Key: key, State: state), preferLocal: false);
        }
        start.Clear();
        return wait;
    }

    private readonly List<(CheckKey Key, CheckState State)> _taken = []; // only the driving probe's thread uses it

    private async Task CheckAsync(CheckKey key, CheckState state, CancellationToken ct)
    {
        ProbeResult result;
        try
        {
            result = await _probe.ProbeAsync(key.Address, state.Endpoint, key.Timeout, ct);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        catch (Exception e)
        {
            result = new ProbeResult(false, e.Message);
        }
        Record(key, state, result, stopped: false);
    }

    /// <summary>One check's result: counts, the verdict, and a transition logged and announced once.</summary>
    private void Record(CheckKey key, CheckState state, ProbeResult result, bool stopped)
    {
        if (stopped)
        {
            Volatile.Write(ref state.Running, false); // the daemon's stop cut it short: no result
            return;
        }
        if (result.Healthy) Interlocked.Increment(ref _succeeded);
        else Interlocked.Increment(ref _failed);

        HealthVerdict? transition = null;
        // The check's own state, under its own lock: results of different checks do not contend.
        lock (state)
        {
            if (Volatile.Read(ref state.Generation) < 0)
            {
                Volatile.Write(ref state.Running, false);
                return;
            }
            state.Detail = result.Detail;
            var now = _time.GetUtcNow();
            state.LastCheck = now;
            if (result.Healthy) { state.Successes++; state.Failures = 0; }
            else { state.Failures++; state.Successes = 0; }
            var next = state.Verdict switch
            {
                HealthVerdict.Unknown when result.Healthy => HealthVerdict.Up,
                HealthVerdict.Down when state.Successes >= key.Up => HealthVerdict.Up,
                not HealthVerdict.Down when !result.Healthy && state.Failures >= key.Down => HealthVerdict.Down,
                var same => same,
            };
            if (next != state.Verdict)
            {
                Interlocked.Increment(ref _generation);
                state.Verdict = next;
                state.Since = now;
                transition = next;
            }
            Volatile.Write(ref state.Running, false);
        }
        if (transition is { } verdict)
        {
            LogTransition(key.Address, state.Endpoint.Scheme, state.Endpoint.Port, verdict, result.Detail);
            Changed?.Invoke();
        }
    }

    private void Wake()
    {
        if (_driver is { } driver) driver.Reschedule();
        else lock (_lock) _wake.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        _stop.Cancel();
        _driver?.Detach(this);
        if (_loop is not null) await _loop.ConfigureAwait(false);
        _stop.Dispose();
    }

    private int _disposed;

    [LoggerMessage(EventId = 400, Level = LogLevel.Warning, Message = "Real server {Address} is {Verdict} ({Scheme} check on port {Port}: {Detail})")]
    private partial void LogTransition(IPAddress address, string scheme, int port, HealthVerdict verdict, string detail);
}
