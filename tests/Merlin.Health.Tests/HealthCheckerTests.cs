using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Merlin.Testing;

namespace Merlin.Health.Tests;

/// <summary>The scheduler and verdicts, on a fake clock with a scripted probe.</summary>
public sealed class HealthCheckerTests : IAsyncDisposable
{
    private readonly FakeTimeProvider _time = new(DateTimeOffset.Parse("2026-11-26T10:00:00Z"));
    private readonly ScriptedProbe _probe = new();
    private readonly HealthChecker _checker;
    private int _changes;

    public HealthCheckerTests()
    {
        _checker = new HealthChecker(_probe, _time, NullLogger<HealthChecker>.Instance);
        _checker.Changed += () => Interlocked.Increment(ref _changes);
        _checker.Start();
    }

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

    /// <summary>Lets the scheduler and the probes' continuations run, and waits until every probe that
    /// started has been recorded (unless the test holds them at the gate), so a loaded machine is not a failure.</summary>
    private async Task SettleAsync()
    {
        for (var i = 0; i < 20; i++) await Task.Delay(5);
        if (_probe.Gate is { Task.IsCompleted: false }) return;
        await UntilAsync(() => _checker.Succeeded + _checker.FailedChecks >= _probe.Calls);
    }

    /// <summary>Waits for what the scheduler does on its own threads; bounded, so a regression fails instead of hanging.</summary>
    private static Task UntilAsync(Func<bool> condition) => Poll.UntilAsync(condition, "the checks the scheduler started", interval: TimeSpan.FromMilliseconds(5));

    private async Task StepAsync(int periods = 1)
    {
        for (var i = 0; i < periods; i++)
        {
            _time.Advance(TimeSpan.FromMilliseconds(500));
            await SettleAsync();
        }
    }

    [Fact]
    public async Task ANewCheck_RunsAtOnce_AndAFirstSuccessIsUp()
    {
        _probe.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _checker.Track([new HealthTarget(Web, Rs1, Check())]);
        await UntilAsync(() => _probe.Calls == 1); // at once: the clock has not moved
        Assert.Equal(HealthVerdict.Unknown, _checker.Verdict(Web, Rs1)); // until the first result

        _probe.Gate.SetResult();
        await UntilAsync(() => _checker.Verdict(Web, Rs1) == HealthVerdict.Up);
        await SettleAsync();
        Assert.Equal(1, _probe.Calls);
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1));
        Assert.Equal(1, _changes);
    }

    [Fact]
    public async Task DownAfterDownThresholdFailures_UpAfterUpThresholdSuccesses_EachTransitionOnce()
    {
        _checker.Track([new HealthTarget(Web, Rs1, Check(up: 2, down: 2))]);
        await SettleAsync();
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
        _checker.Track([new HealthTarget(Web, Rs1, check), new HealthTarget(Tls, rs1In443, check)]);
        await SettleAsync();
        await StepAsync(3);

        Assert.Equal(4, _probe.Calls);
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Web, Rs1));
        Assert.Equal(HealthVerdict.Up, _checker.Verdict(Tls, rs1In443));
    }

    [Fact]
    public async Task AnUntrackedCheck_StopsRunning_AndItsServerIsUnknown()
    {
        _checker.Track([new HealthTarget(Web, Rs1, Check())]);
        await SettleAsync();
        _checker.Track([]);
        var calls = _probe.Calls;

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
        _checker.Track([other]);
        await SettleAsync();
        _time.Advance(TimeSpan.FromMilliseconds(100));
        _checker.Track([other, new HealthTarget(Web, Rs1, Check())]);
        await SettleAsync();
        _time.Advance(TimeSpan.FromMilliseconds(150));
        await SettleAsync();
        _checker.Track([other]);
        await SettleAsync();
        _checker.Track([other, new HealthTarget(Web, Rs1, Check())]);
        await SettleAsync();
        var calls = _probe.Calls;

        for (var i = 0; i < 40; i++) // 2 s in steps of 50 ms, so two rhythms would not fall on one step
        {
            _time.Advance(TimeSpan.FromMilliseconds(50));
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }
        await SettleAsync();

        Assert.Equal(calls + 8, _probe.Calls); // two checks, four periods
    }

    [Fact]
    public async Task ASlowCheck_IsNotStartedAgainBeforeItEnds()
    {
        _probe.Gate = new TaskCompletionSource();
        _checker.Track([new HealthTarget(Web, Rs1, Check())]);
        await SettleAsync();
        await StepAsync(3);
        Assert.Equal(1, _probe.Calls);
        Assert.Equal(3, _checker.Skipped); // counted, for the falling-behind alert

        _probe.Gate.SetResult();
        await SettleAsync();
        await StepAsync();
        Assert.Equal(2, _probe.Calls);
    }

    [Fact]
    public async Task Report_SaysWhatTheLastCheckSaw()
    {
        _checker.Track([new HealthTarget(Web, Rs1, Check(down: 1))]);
        await SettleAsync();
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
        _checker.Track([new HealthTarget(Web, Rs1, Check())]);
        await SettleAsync();
        Assert.Equal(TimeSpan.Zero, _checker.Delay); // a new check runs at once

        _time.Advance(TimeSpan.FromMilliseconds(700)); // due at 500 ms, started at 700 ms
        await SettleAsync();
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
