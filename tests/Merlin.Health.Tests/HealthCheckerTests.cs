using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Microsoft.Extensions.Logging.Abstractions;
using Merlin.Testing;

namespace Merlin.Health.Tests;

/// <summary>The scheduler and verdicts, on a fake clock with a scripted probe.</summary>
public sealed class HealthCheckerTests : IAsyncLifetime
{
    private readonly FakeClock _time = new(DateTimeOffset.Parse("2026-11-26T10:00:00Z"));
    private readonly ScriptedProbe _probe = new();
    private readonly HealthChecker _checker;
    private int _changes;

    public HealthCheckerTests()
    {
        _checker = new HealthChecker(_probe, _time, NullLogger<HealthChecker>.Instance);
        _checker.Changed += () => Interlocked.Increment(ref _changes);
        _checker.Start();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // The scheduler's loop has made its first pass and sleeps on the clock: each step below then wakes it once.
    public async ValueTask InitializeAsync() => await _time.TimerSetAfterAsync(0, "the scheduler's first pass", Ct);

    public async ValueTask DisposeAsync() => await _checker.DisposeAsync();

    private static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
    private static readonly ServiceKey Tls = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 443, Protocol.Tcp);
    private static readonly RealServerKey Rs1 = new(IPAddress.Parse("198.18.1.1"), 80);
    private static readonly RealServerKey Rs1Tls = new(IPAddress.Parse("198.18.1.1"), 443);

    private static HealthCheck Check(uint up = 2, uint down = 2) => new()
    {
        Endpoint = new Uri("http://check.invalid:8080/health"),
        Period = TimeSpan.FromMilliseconds(500), Timeout = TimeSpan.FromMilliseconds(200), UpThreshold = up, DownThreshold = down,
    };

    /// <summary>Tracks <paramref name="targets"/> and waits until the scheduler has handled it: started what is due
    /// and set its timer for the next check again.</summary>
    private async Task TrackAsync(params HealthTarget[] targets)
    {
        var sets = _time.TimerSets;
        _checker.Track(targets);
        await _time.TimerSetAfterAsync(sets, "the scheduler's pass after Track", Ct);
        await RecordedAsync();
    }

    /// <summary>Moves the clock; when that fires the scheduler's timer, waits until the scheduler has started what
    /// is due and set its timer again. No timer armed means the scheduler runs nothing until the next Track.</summary>
    private async Task AdvanceAsync(TimeSpan by)
    {
        var sets = _time.TimerSets;
        var fires = _time.Pending is [var due, ..] && due <= by;
        _time.Advance(by);
        if (fires) await _time.TimerSetAfterAsync(sets, "the scheduler's pass after its timer fired", Ct);
        await RecordedAsync();
    }

    private async Task StepAsync(int periods = 1)
    {
        for (var i = 0; i < periods; i++) await AdvanceAsync(TimeSpan.FromMilliseconds(500));
    }

    /// <summary>Waits until every probe that started has been recorded, unless the test holds them at the gate.</summary>
    private Task RecordedAsync() =>
        _probe.Gate is { Task.IsCompleted: false } ? Task.CompletedTask : UntilAsync(() => _checker.Succeeded + _checker.FailedChecks >= _probe.Calls);

    /// <summary>Waits for what the probes do on other threads; bounded, so a regression fails instead of hanging.</summary>
    private static Task UntilAsync(Func<bool> condition) => Poll.UntilAsync(condition, "the checks the scheduler started", interval: TimeSpan.FromMilliseconds(5));

    [Fact]
    public async Task ANewCheck_RunsAtOnce_AndAFirstSuccessIsUp()
    {
        _probe.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await TrackAsync(new HealthTarget(Web, Rs1, Check()));
        Assert.Equal(1, _probe.Calls); // at once: the clock has not moved
        Assert.Equal(HealthVerdict.Unknown, _checker.Verdict(Web, Rs1)); // until the first result

        _probe.Gate.SetResult();
        await UntilAsync(() => _checker.Verdict(Web, Rs1) == HealthVerdict.Up);
        Assert.Equal([TimeSpan.FromMilliseconds(500)], _time.Pending); // the next check is a period away
        Assert.Equal(1, _probe.Calls);
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1));
        Assert.Equal(1, _changes);
    }

    [Fact]
    public async Task DownAfterDownThresholdFailures_UpAfterUpThresholdSuccesses_EachTransitionOnce()
    {
        await TrackAsync(new HealthTarget(Web, Rs1, Check(up: 2, down: 2)));
        _probe.Healthy = false;

        await StepAsync();
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1)); // one failure is not enough
        await StepAsync();
        Assert.Equal(HealthVerdict.Down, _checker.Verdict(Web, Rs1));
        await StepAsync(3);
        Assert.Equal(2, _changes); // Up, then Down: staying down raises nothing

        _probe.Healthy = true;
        await StepAsync();
        Assert.Equal(HealthVerdict.Down, _checker.Verdict(Web, Rs1));
        await StepAsync();
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1));
        Assert.Equal(3, _changes);
        Assert.Equal(8, _probe.Calls); // one per period, no more
    }

    [Fact]
    public async Task AServerInTwoServices_IsCheckedOnce_AndBothGetTheVerdict()
    {
        var check = Check();
        var rs1In443 = new RealServerKey(Rs1.Address, 443);
        await TrackAsync(new HealthTarget(Web, Rs1, check), new HealthTarget(Tls, rs1In443, check));
        await StepAsync(3);

        Assert.Equal(4, _probe.Calls);
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1));
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Tls, rs1In443));
    }

    [Fact]
    public async Task AnUntrackedCheck_StopsRunning_AndItsServerIsUnknown()
    {
        await TrackAsync(new HealthTarget(Web, Rs1, Check()));
        await TrackAsync();
        var calls = _probe.Calls;
        Assert.Empty(_time.Pending); // nothing left to wake the scheduler for

        await StepAsync(4);

        Assert.Equal(calls, _probe.Calls);
        Assert.Equal(HealthVerdict.Unknown, _checker.Verdict(Web, Rs1));
        Assert.Empty(_checker.Report());
    }

    [Fact]
    public async Task ACheckRemovedAndAddedAgain_RunsOncePerPeriod_NotAlsoOnItsOldRhythm()
    {
        // As when an agent's server is deleted and registered again during a rolling restart, while
        // other checks keep the removed one's old turn from coming up first.
        var rs2 = new RealServerKey(IPAddress.Parse("198.18.1.2"), 80);
        var other = new HealthTarget(Web, rs2, Check());
        await TrackAsync(other);
        await AdvanceAsync(TimeSpan.FromMilliseconds(100));
        await TrackAsync(other, new HealthTarget(Web, Rs1, Check()));
        await AdvanceAsync(TimeSpan.FromMilliseconds(150));
        await TrackAsync(other);
        await TrackAsync(other, new HealthTarget(Web, Rs1, Check()));
        var calls = _probe.Calls;

        for (var i = 0; i < 40; i++) // 2 s in steps of 50 ms, so two rhythms would not fall on one step
            await AdvanceAsync(TimeSpan.FromMilliseconds(50));

        Assert.Equal(calls + 8, _probe.Calls); // two checks, four periods
    }

    [Fact]
    public async Task ASlowCheck_IsNotStartedAgainBeforeItEnds()
    {
        _probe.Gate = new TaskCompletionSource();
        await TrackAsync(new HealthTarget(Web, Rs1, Check()));
        await StepAsync(3);
        Assert.Equal(1, _probe.Calls);
        Assert.Equal(3, _checker.Skipped); // counted, for the falling-behind alert

        _probe.Gate.SetResult();
        await RecordedAsync();
        await StepAsync();
        Assert.Equal(2, _probe.Calls);
    }

    [Fact]
    public async Task Report_SaysWhatTheLastCheckSaw()
    {
        await TrackAsync(new HealthTarget(Web, Rs1, Check(down: 1)));
        _probe.Healthy = false;
        await StepAsync();

        var report = Assert.Single(_checker.Report());
        Assert.Equal(HealthVerdict.Down, report.Verdict);
        Assert.Equal("HTTP 503", report.Detail);
        Assert.Equal(_time.GetUtcNow(), report.Since);
        Assert.Equal(_time.GetUtcNow(), report.LastCheck);
    }

    [Fact]
    public async Task AChecksStartAfterItWasDue_AddsToTheDelay()
    {
        await TrackAsync(new HealthTarget(Web, Rs1, Check()));
        Assert.Equal(TimeSpan.Zero, _checker.Delay); // a new check runs at once

        await AdvanceAsync(TimeSpan.FromMilliseconds(700)); // due at 500 ms, started at 700 ms
        Assert.Equal(2, _probe.Calls);
        Assert.Equal(200, _checker.Delay.TotalMilliseconds, precision: 3);
        Assert.Equal(0, _checker.Skipped);
    }

    private sealed class ScriptedProbe : IHealthProbe
    {
        private int _calls;
        public int Calls => Volatile.Read(ref _calls);
        public volatile bool Healthy = true;
        public TaskCompletionSource? Gate;

        public async Task<ProbeResult> ProbeAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct)
        {
            Interlocked.Increment(ref _calls);
            if (Gate is { } gate) await gate.Task;
            return Healthy ? new ProbeResult(true, "HTTP 200") : new ProbeResult(false, "HTTP 503");
        }
    }
}

public sealed class HealthOverlayTests
{
    private static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
    private static RealServerKey Rs(int i) => new(IPAddress.Parse($"198.18.1.{i}"), 80);
    private static RealServerConfig W(uint weight) => new() { Weight = weight };

    private static DataplaneState State(params (int Server, uint Weight)[] servers) =>
        new([new ServiceState(Web, new ServiceConfig { Scheduler = "mh", PersistenceNetmask = 32 }, servers.ToDictionary(s => Rs(s.Server), s => W(s.Weight)))]);

    [Fact]
    public void Verdicts_SetWeights_AndUnknownTrustsTheKernel()
    {
        var desired = State((1, 10), (2, 10), (3, 10), (4, 10), (5, 10));
        var actual = State((1, 10), (2, 10), (3, 7), (5, 10)); // 4 is new; 3 was left at 7 by the last daemon
        var verdicts = new Dictionary<RealServerKey, HealthVerdict> { [Rs(1)] = HealthVerdict.Up, [Rs(2)] = HealthVerdict.Down };
        var checkedServers = new HashSet<(ServiceKey, RealServerKey)> { (Web, Rs(1)), (Web, Rs(2)), (Web, Rs(3)), (Web, Rs(4)) }; // 5 has no check

        var result = HealthOverlay.Apply(desired, actual, checkedServers, (_, s) => verdicts.GetValueOrDefault(s));

        var weights = result.Services[Web].Servers.ToDictionary(kv => kv.Key, kv => kv.Value.Weight);
        Assert.Equal(10u, weights[Rs(1)]); // up: configured
        Assert.Equal(0u, weights[Rs(2)]);  // down: 0, still in the table
        Assert.Equal(7u, weights[Rs(3)]);  // no verdict yet: what the kernel has
        Assert.Equal(0u, weights[Rs(4)]);  // no verdict, not in the kernel: 0 until checked
        Assert.Equal(10u, weights[Rs(5)]); // unchecked: configured
    }

    [Fact]
    public void NoChecks_LeavesTheDesiredStateAsItIs()
    {
        var desired = State((1, 10));
        Assert.Same(desired, HealthOverlay.Apply(desired, DataplaneState.Empty, new HashSet<(ServiceKey, RealServerKey)>(), (_, _) => HealthVerdict.Down));
    }
}
