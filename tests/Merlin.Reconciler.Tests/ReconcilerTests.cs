using System.Net;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;
using Merlin.Testing;
using Wire = Merlin.Contracts;

namespace Merlin.Reconciler.Tests;

public class ReconcilerTests
{
    private readonly FakeStore _store = new();
    private readonly InMemoryDataplane _dataplane = new();
    private readonly ReconcilerStatus _status = new(TimeProvider.System);
    private readonly ReconcilePass _reconciler;

    public ReconcilerTests()
    {
        _reconciler = new ReconcilePass(_store, _dataplane, _status, NullLogger<ReconcilePass>.Instance, TimeProvider.System);
        _store.Items.Add(FakeStore.Item(FakeStore.Service("web", "198.18.0.10"),
            [FakeStore.Server("web", "198.18.1.20"), FakeStore.Server("web", "198.18.1.21")]));
        _store.Items.Add(FakeStore.Item(FakeStore.Service("v6", "2001:db8::10", 443), [FakeStore.Server("v6", "2001:db8::20", port: 443)]));
    }

    private static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);

    [Fact]
    public async Task RunPass_FromEmpty_ProgramsEverything_ThenSteadyStateIssuesNothing()
    {
        var first = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        var second = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.Equal(5, first.Applied); // 2 services + 3 servers
        Assert.Equal(2, _dataplane.State.Services.Count);
        Assert.Equal(2, _dataplane.State.Services[Web].Servers.Count);
        Assert.Equal(0, second.Planned);
        Assert.True(_status.Current.Ready);
    }

    [Fact]
    public async Task RunPass_UnchangedStore_IsNotReadAgain_ButAChangeIs()
    {
        await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        var lists = _store.Lists;

        var resync = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        Assert.Equal(lists, _store.Lists);
        Assert.Equal(1, _reconciler.StoreReadsSkipped);
        Assert.Equal(1, _reconciler.StoreReads); // the daemon compacts its heap after each of these
        Assert.Equal(0, resync.Planned);

        _store.Items.Add(FakeStore.Item(FakeStore.Service("late", "198.18.0.13"), [FakeStore.Server("late", "198.18.1.30")]));
        var changed = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        Assert.Equal(lists + 1, _store.Lists);
        Assert.Equal(2, _reconciler.StoreReads);
        Assert.Equal(2, changed.Applied);
        Assert.Equal(3, _dataplane.State.Services.Count);
    }

    [Fact]
    public async Task RunPass_SameStoreSameKernelSameVerdicts_SkipsPlanning_AnyChangePlansAgain()
    {
        var check = new Wire.RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health", Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
            Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(1)), UpThreshold = 1, DownThreshold = 1,
        };
        var web = _store.Items[0];
        _store.Items[0] = new StoreItem(web.Service, web.Servers.Select(s => { var c = StoredRecords.Message(s).Clone(); c.HealthCheck = check; return StoredRecords.Of(c); }).ToList());
        var stable = new StableDataplane(_dataplane);
        var health = new FixedHealth();
        var reconciler = new ReconcilePass(_store, stable, _status, NullLogger<ReconcilePass>.Instance, TimeProvider.System, health);
        var ct = TestContext.Current.CancellationToken;
        await reconciler.RunPassAsync(ct);
        await reconciler.RunPassAsync(ct); // converges: nothing planned
        Assert.Equal(0, reconciler.PlansSkipped);

        await reconciler.RunPassAsync(ct);
        Assert.Equal(1, reconciler.PlansSkipped);

        // A verdict changes: the pass plans, and the server's weight drops to 0.
        health.Down.Add(FakeStore.Server("web", "198.18.1.20").Key.Ip);
        health.Generation++;
        var afterVerdict = await reconciler.RunPassAsync(ct);
        Assert.Equal(1, afterVerdict.Applied);
        Assert.Equal(0u, _dataplane.State.Services[Web].Servers.Single(s => s.Key.Address.ToString() == "198.18.1.20").Value.Weight);

        // The kernel changes behind our back (the dataplane answers with a new state): the pass plans and repairs.
        await reconciler.RunPassAsync(ct);
        _dataplane.Tamper(new DeleteServer(Web, new RealServerKey(IPAddress.Parse("198.18.1.21"), 80)));
        stable.Forget();
        var repair = await reconciler.RunPassAsync(ct);
        Assert.Equal(1, repair.Applied);
    }

    /// <summary>Answers reads with the same instance until something is applied, as the IPVS dataplane does.</summary>
    private sealed class StableDataplane(InMemoryDataplane inner) : IDataplane
    {
        private DataplaneState? _last;
        public string Name => "stable";
        public void Forget() => _last = null;
        public Task<DataplaneState> ReadAsync(CancellationToken ct) => Task.FromResult(_last ??= inner.State);
        public Task ApplyAsync(Operation operation, CancellationToken ct)
        {
            _last = null;
            return inner.ApplyAsync(operation, ct);
        }
    }

    private sealed class FixedHealth : IServerHealth
    {
        public HashSet<string> Down { get; } = [];
        public long Generation { get; set; }
        public event Action? Changed { add { } remove { } }
        public void Track(IReadOnlyList<HealthTarget> targets) { }
        public HealthVerdict Verdict(ServiceKey service, RealServerKey server) =>
            Down.Contains(server.Address.ToString()) ? HealthVerdict.Down : HealthVerdict.Up;
    }

    /// <summary>
    /// The desired state a pass records (status, announcer) carries its server count and VIPs without walking every
    /// service: kept by the store mirror, shared by the health overlay and by a scoped pass's merge. Random writes
    /// and verdicts, scoped and full passes: both always equal a walk of the recorded services.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task RunPass_RecordedState_CountsServersAndVipsAsAWalkWould(int seed)
    {
        var random = new Random(seed);
        var check = new Wire.RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health", Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
            Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(1)), UpThreshold = 1, DownThreshold = 1,
        };
        string[] vips = ["198.18.0.10", "198.18.0.11", "198.18.0.12", "2001:db8::10"];
        string[] servers = ["198.18.1.20", "198.18.1.21", "198.18.1.22", "198.18.1.23"];
        var services = new Dictionary<string, (Wire.VirtualService Service, Dictionary<string, Wire.RealServer> Servers)>();
        var health = new FixedHealth();
        var reconciler = new ReconcilePass(_store, _dataplane, _status, NullLogger<ReconcilePass>.Instance, TimeProvider.System, health);
        _store.Items.Clear();
        var ct = TestContext.Current.CancellationToken;
        await reconciler.RunPassAsync(ct);
        reconciler.FollowingWatch = true;
        var revision = 1_000L;
        for (var step = 0; step < 300; step++)
        {
            var id = $"s{random.Next(8)}";
            switch (random.Next(5))
            {
                case 0 when !services.ContainsKey(id): // a service on a shared VIP (several ports)
                    var service = FakeStore.Service(id, vips[random.Next(vips.Length)], port: (uint)(80 + random.Next(3)));
                    if (services.Values.Any(s => s.Service.Key.Equals(service.Key))) break;
                    services[id] = (service, []);
                    reconciler.Observe(new StoreChange(StoreChangeKind.Put, $"services/{id}", ++revision) { Service = StoredRecords.Of(service) });
                    break;
                case 1 when services.Remove(id, out var gone):
                    reconciler.Observe(new StoreChange(StoreChangeKind.Delete, $"services/{id}", ++revision));
                    foreach (var e in gone.Servers.Keys) reconciler.Observe(new StoreChange(StoreChangeKind.Delete, $"servers/{id}/{e}", revision));
                    break;
                case 2 when services.TryGetValue(id, out var s):
                    var ip = servers[random.Next(servers.Length)];
                    var port = s.Service.Key.Port;
                    var server = FakeStore.Server(id, ip, weight: (uint)random.Next(1, 4), port: port);
                    server.HealthCheck = check;
                    s.Servers[$"{ip}:{port}"] = server;
                    reconciler.Observe(new StoreChange(StoreChangeKind.Put, $"servers/{id}/{ip}:{port}", ++revision) { Server = StoredRecords.Of(server) });
                    break;
                case 3 when services.TryGetValue(id, out var s) && s.Servers.Count > 0:
                    var endpoint = s.Servers.Keys.ElementAt(random.Next(s.Servers.Count));
                    s.Servers.Remove(endpoint);
                    reconciler.Observe(new StoreChange(StoreChangeKind.Delete, $"servers/{id}/{endpoint}", ++revision));
                    break;
                case 4:
                    var flipped = servers[random.Next(servers.Length)];
                    if (!health.Down.Remove(flipped)) health.Down.Add(flipped);
                    health.Generation++;
                    break;
            }
            await reconciler.RunPassAsync(fullPlan: step % 7 == 0, ct);
            var recorded = _status.Current.Desired!;
            var walked = new DataplaneState(recorded.Services);
            Assert.Equal(walked.ServerCount, recorded.ServerCount);
            Assert.True(walked.Addresses.SetEquals(recorded.Addresses), $"step {step}: VIPs {string.Join(" ", recorded.Addresses)}, walked {string.Join(" ", walked.Addresses)}");
            Assert.Equal(services.Count, recorded.Services.Count);
        }
        Assert.True(reconciler.ScopedPlans > 60, $"{reconciler.ScopedPlans} scoped passes");
    }

    [Fact]
    public async Task RunPass_StoreUnreachable_LeavesDataplaneUntouched()
    {
        await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        var before = _dataplane.State;
        var applied = _dataplane.OperationsApplied;
        _store.Down = true;

        var result = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.False(result.StoreReachable);
        Assert.Equal(applied, _dataplane.OperationsApplied);
        Assert.True(_dataplane.State.SameAs(before));
        Assert.False(_status.Current.StoreReachable);
        Assert.Contains("did not answer", _status.Current.LastError);
    }

    [Fact]
    public async Task RunPass_KernelRefusesOneService_OthersAreProgrammedAndTheFailureIsReported()
    {
        _dataplane.FailWith = op => op is AddService a && a.Service.Equals(Web) ? new DataplaneException("EINVAL") : null;

        var result = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3, result.Failed); // the service and its two servers
        Assert.Equal(2, result.Applied); // the IPv6 service and its server
        Assert.False(result.Converged);
        Assert.Contains("EINVAL", _status.Current.LastError);

        _dataplane.FailWith = null;
        var retry = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        Assert.Equal(3, retry.Applied);
        Assert.True(retry.Converged);
    }

    [Fact]
    public async Task RunPass_ChangeBehindOurBack_IsRepaired()
    {
        await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);
        _dataplane.Tamper(new DeleteServer(Web, new RealServerKey(IPAddress.Parse("198.18.1.21"), 80)));
        _dataplane.Tamper(new UpdateServer(Web, new RealServerKey(IPAddress.Parse("198.18.1.20"), 80), new RealServerConfig { Weight = 99 }));

        var repair = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.Equal(2, repair.Applied);
        Assert.Equal(1u, _dataplane.State.Services[Web].Servers[new RealServerKey(IPAddress.Parse("198.18.1.20"), 80)].Weight);
        Assert.Equal(2, _dataplane.State.Services[Web].Servers.Count);
    }

    [Fact]
    public async Task RunPass_InvalidRecordInStore_IsSkippedAndReported_RestIsProgrammed()
    {
        _store.Items.Add(FakeStore.Item(FakeStore.Service("bad", "198.18.0.99", scheduler: "bogus"), []));
        _store.Items.Add(FakeStore.Item(FakeStore.Service("mixed", "198.18.0.12"), [FakeStore.Server("mixed", "2001:db8::1")]));

        var result = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3, _dataplane.State.Services.Count);
        Assert.Contains(result.Rejected, r => r.Key == "services/bad" && r.Reason.Contains("config.scheduler"));
        Assert.Contains(result.Rejected, r => r.Key.StartsWith("servers/mixed/") && r.Reason.Contains("IPv6 but the service is IPv4"));
    }

    [Fact]
    public async Task RunPass_StoredHealthCheckOutsideTodaysBounds_IsProgrammedAtTheNearestBound_AndReported()
    {
        // A record stored before the API bounded periods (50 ms) must not vanish from the dataplane on upgrade.
        var fast = FakeStore.Server("web", "198.18.1.40");
        fast.HealthCheck = new Wire.RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health", UpThreshold = 1, DownThreshold = 1,
            Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromMilliseconds(50)),
            Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromMilliseconds(20)),
        };
        var broken = FakeStore.Server("web", "198.18.1.41");
        broken.HealthCheck = fast.HealthCheck.Clone();
        broken.HealthCheck.Period = new Google.Protobuf.WellKnownTypes.Duration { Seconds = 1, Nanos = -1 };
        _store.Items[0] = new StoreItem(_store.Items[0].Service, [.. _store.Items[0].Servers, StoredRecords.Of(fast), StoredRecords.Of(broken)]);

        var result = await _reconciler.RunPassAsync(TestContext.Current.CancellationToken);

        Assert.Contains(new RealServerKey(IPAddress.Parse("198.18.1.40"), 80), _dataplane.State.Services[Web].Servers.Keys);
        Assert.DoesNotContain(new RealServerKey(IPAddress.Parse("198.18.1.41"), 80), _dataplane.State.Services[Web].Servers.Keys);
        Assert.Contains(result.Rejected, r => r.Key.EndsWith("198.18.1.40:80") && r.Reason.Contains("checked every 100ms with a 20ms timeout instead; the server is programmed"));
        Assert.Contains(result.Rejected, r => r.Key.EndsWith("198.18.1.41:80") && r.Reason.StartsWith("health_check.period:"));
    }

    [Fact]
    public async Task Loop_StoreChange_TriggersAPassThatProgramsIt()
    {
        var loop = new ReconcileLoop(_reconciler, _store, new ReconcilerOptions { SyncPeriod = TimeSpan.FromHours(1) },
            NullLogger<ReconcileLoop>.Instance, TimeProvider.System);
        var ct = TestContext.Current.CancellationToken;
        await loop.StartAsync(ct);
        try
        {
            await WaitUntil(() => _dataplane.State.Services.Count == 2, ct);
            _store.Items.Add(FakeStore.Item(FakeStore.Service("late", "198.18.0.13"), [FakeStore.Server("late", "198.18.1.30")]));
            _store.Changed("services/late");
            await WaitUntil(() => _dataplane.State.Services.Count == 3, ct);
        }
        finally
        {
            await loop.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Loop_ChangeWithItsRecord_IsAppliedWithoutAStoreRead_ResyncReadsAgain()
    {
        var loop = new ReconcileLoop(_reconciler, _store, new ReconcilerOptions { SyncPeriod = TimeSpan.FromHours(1), MinPassInterval = TimeSpan.Zero },
            NullLogger<ReconcileLoop>.Instance, TimeProvider.System);
        var ct = TestContext.Current.CancellationToken;
        await loop.StartAsync(ct);
        try
        {
            await WaitUntil(() => _dataplane.State.Services.Count == 2, ct);
            var lists = _store.Lists;
            var revisionReads = _store.RevisionReads;
            var heavier = FakeStore.Server("web", "198.18.1.20", weight: 5);
            _store.Items[0] = new StoreItem(_store.Items[0].Service, [StoredRecords.Of(heavier), StoredRecords.Of(FakeStore.Server("web", "198.18.1.21"))]);
            _store.Changed("servers/web/198.18.1.20:80", heavier);
            var server = new RealServerKey(IPAddress.Parse("198.18.1.20"), 80);
            await WaitUntil(() => _dataplane.State.Services[Web].Servers[server].Weight == 5, ct);
            Assert.Equal(lists, _store.Lists);
            Assert.Equal(revisionReads, _store.RevisionReads); // the event answered for the store: no round trip first
            Assert.True(_reconciler.ScopedPlans >= 1);

            _store.Items.RemoveAt(1);
            _store.Changed("", kind: StoreChangeKind.Resync); // the history was compacted: only a List knows what changed
            await WaitUntil(() => _dataplane.State.Services.Count == 1, ct);
            Assert.Equal(lists + 1, _store.Lists);
        }
        finally
        {
            await loop.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Loop_StoreDownAtStart_RetriesWithBackoffAndProgramsWhenItReturns()
    {
        _store.Down = true;
        var loop = new ReconcileLoop(_reconciler, _store,
            new ReconcilerOptions { SyncPeriod = TimeSpan.FromHours(1), RetryMin = TimeSpan.FromMilliseconds(10), RetryMax = TimeSpan.FromMilliseconds(40) },
            NullLogger<ReconcileLoop>.Instance, TimeProvider.System);
        var ct = TestContext.Current.CancellationToken;
        await loop.StartAsync(ct);
        try
        {
            await WaitUntil(() => _store.RevisionReads >= 3, ct); // each attempt asks the store first
            Assert.Empty(_dataplane.State.Services);
            _store.Down = false;
            await WaitUntil(() => _dataplane.State.Services.Count == 2, ct);
        }
        finally
        {
            await loop.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Loop_AChangeAfterAQuietSpell_IsAppliedAtOnce_TheNextWaitsForTheInterval()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UnixEpoch);
        var loop = new ReconcileLoop(_reconciler, _store, new ReconcilerOptions { SyncPeriod = TimeSpan.FromDays(1), MinPassInterval = TimeSpan.FromHours(1) },
            NullLogger<ReconcileLoop>.Instance, clock);
        var ct = TestContext.Current.CancellationToken;
        await loop.StartAsync(ct);
        try
        {
            await WaitUntil(() => _dataplane.State.Services.Count == 2, ct);
            clock.Advance(TimeSpan.FromHours(2));   // quiet for longer than the interval

            _store.Items.Add(FakeStore.Item(FakeStore.Service("late", "198.18.0.13"), [FakeStore.Server("late", "198.18.1.30")]));
            _store.Changed("services/late");
            await WaitUntil(() => _dataplane.State.Services.Count == 3, ct);   // no time passed on the loop's clock

            var passes = loop.Passes;
            _store.Items.Add(FakeStore.Item(FakeStore.Service("later", "198.18.0.14"), [FakeStore.Server("later", "198.18.1.31")]));
            _store.Changed("services/later");
            await Task.Delay(300, ct);
            Assert.Equal(3, _dataplane.State.Services.Count);   // within the interval of the last pass: it waits
            Assert.Equal(passes, loop.Passes);
            clock.Advance(TimeSpan.FromHours(1));
            await WaitUntil(() => _dataplane.State.Services.Count == 4, ct);
        }
        finally
        {
            await loop.StopAsync(CancellationToken.None);
        }
    }

    private static Task WaitUntil(Func<bool> condition, CancellationToken ct) => Poll.UntilAsync(condition, "the loop's passes", ct: ct);
}
