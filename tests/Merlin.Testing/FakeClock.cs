using System.Diagnostics;
using Microsoft.Extensions.Time.Testing;

namespace Merlin.Testing;

/// <summary>
/// A <see cref="FakeTimeProvider"/> that also shows a test the timers the code under test has armed on it, and
/// lets the test wait until that code has set a timer (a <c>Task.Delay</c> on this clock, a loop re-arming its
/// wake-up). That is the hand-off a fake-clock test needs: "the code now waits on the clock, so moving the clock
/// is what moves it" — with no real time slept to let a worker catch up. Waits are bounded by real time
/// (<see cref="Poll.DefaultLimit"/>) only so a regression fails instead of hanging.
/// </summary>
public sealed class FakeClock(DateTimeOffset start) : FakeTimeProvider(start)
{
    private readonly Lock _lock = new();
    // Held while a timer is changed and while the clock moves: a Change is then wholly before or wholly after an
    // Advance. Without it a timer could be counted as set (the test goes on), the clock moved, and only then the fake
    // provider's own timer armed, relative to the new time: due now by our books, never fired. Re-entrant (a Monitor),
    // since a timer's callback may change a timer while Advance fires it.
    private readonly object _moving = new();
    private readonly List<WatchedTimer> _armed = [];
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _sets;

    /// <summary>How many times a timer was set on this clock (created with a due time, or changed, even to never): a loop that
    /// re-arms its timer after each wake-up has finished that wake-up when this count moves.</summary>
    public long TimerSets
    {
        get { lock (_lock) return _sets; }
    }

    /// <summary>The time until each armed timer is due, soonest first.</summary>
    public IReadOnlyList<TimeSpan> Pending
    {
        get
        {
            var now = GetUtcNow();
            lock (_lock) return PendingLocked(now);
        }
    }

    private List<TimeSpan> PendingLocked(DateTimeOffset now) => _armed.Select(t => t.DueAt!.Value - now).Order().ToList();

    /// <summary>Waits until a timer has been set since <paramref name="sets"/> (a value of <see cref="TimerSets"/>
    /// read before the step that should make the code set one); fails naming <paramref name="what"/>.</summary>
    public Task TimerSetAfterAsync(long sets, string what, CancellationToken ct = default) =>
        UntilAsync(_ => _sets > sets, what, ct);

    /// <summary>Waits until the armed timers (the time until each is due, soonest first) are as
    /// <paramref name="condition"/> wants: e.g. the code under test waits for one deadline, 30 s away.</summary>
    public Task UntilPendingAsync(Func<IReadOnlyList<TimeSpan>, bool> condition, string what, CancellationToken ct = default) =>
        UntilAsync(condition, what, ct);

    /// <summary>Waits until a timer is armed; returns the time until the soonest is due.</summary>
    public async Task<TimeSpan> NextTimerAsync(string what, CancellationToken ct = default)
    {
        await UntilAsync(pending => pending.Count > 0, what, ct);
        return Pending[0];
    }

    /// <summary>Waits until a timer is armed, then moves the clock to when the soonest is due, so it fires.</summary>
    public async Task<TimeSpan> AdvanceToNextTimerAsync(string what, CancellationToken ct = default)
    {
        var due = await NextTimerAsync(what, ct);
        Advance(due);
        return due;
    }

    private async Task UntilAsync(Func<IReadOnlyList<TimeSpan>, bool> conditionLocked, string what, CancellationToken ct)
    {
        var limit = Stopwatch.StartNew();
        while (true)
        {
            Task changed;
            var now = GetUtcNow(); // outside the lock: the fake clock's own lock is never taken inside this one
            lock (_lock)
            {
                if (conditionLocked(PendingLocked(now))) return;
                changed = _changed.Task;
            }
            var left = Poll.DefaultLimit - limit.Elapsed;
            try
            {
                if (left <= TimeSpan.Zero) throw new TimeoutException();
                await changed.WaitAsync(left, ct);
            }
            catch (TimeoutException)
            {
                Assert.Fail($"{what}: not seen on the fake clock's timers within {Poll.DefaultLimit.TotalSeconds:0} s (armed, due in: {string.Join(", ", Pending)})");
            }
        }
    }

    /// <summary>Moves the clock (firing what falls due), never in the middle of a timer's change.</summary>
    public new void Advance(TimeSpan delta)
    {
        lock (_moving) base.Advance(delta);
    }

    /// <summary>Sets the clock (firing what falls due), never in the middle of a timer's change.</summary>
    public new void SetUtcNow(DateTimeOffset value)
    {
        lock (_moving) base.SetUtcNow(value);
    }

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var watched = new WatchedTimer(this);
        watched.Inner = base.CreateTimer(static s => ((WatchedTimer)s!).Fire(), watched, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        watched.Callback = callback;
        watched.State = state;
        if (dueTime != Timeout.InfiniteTimeSpan) watched.Change(dueTime, period);
        return watched;
    }

    private void Set(WatchedTimer timer, DateTimeOffset? dueAt, bool counts)
    {
        TaskCompletionSource changed;
        lock (_lock)
        {
            timer.DueAt = dueAt;
            _armed.Remove(timer);
            if (dueAt is not null) _armed.Add(timer);
            if (counts) _sets++;
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        changed.TrySetResult();
    }

    /// <summary>Wraps the fake clock's own timer, to know when it is armed, fires and is disposed.</summary>
    private sealed class WatchedTimer(FakeClock clock) : ITimer
    {
        public ITimer Inner = null!;
        public TimerCallback Callback = null!;
        public object? State;
        public DateTimeOffset? DueAt;
        private TimeSpan _period = Timeout.InfiniteTimeSpan;
        private bool _disposed;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            if (_disposed) return false;
            lock (clock._moving)
            {
                _period = period;
                clock.Set(this, dueTime == Timeout.InfiniteTimeSpan ? null : clock.GetUtcNow() + dueTime, counts: true);
                return Inner.Change(dueTime, period);
            }
        }

        public void Fire()
        {
            // A periodic timer stays armed for its next period; a one-shot one is done.
            clock.Set(this, _period == Timeout.InfiniteTimeSpan || _period == TimeSpan.Zero ? null : clock.GetUtcNow() + _period, counts: false);
            Callback(State);
        }

        public void Dispose()
        {
            _disposed = true;
            clock.Set(this, null, counts: false);
            Inner.Dispose();
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
