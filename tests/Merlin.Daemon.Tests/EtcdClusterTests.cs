using System.Diagnostics;
using System.Net;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Store.Etcd;
using Merlin.Testing;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>One etcd cluster of three members on loopback for a test class; each test uses its own key prefix.</summary>
public sealed class EtcdClusterFixture : IDisposable
{
    private EtcdCluster? _cluster;

    public EtcdCluster Cluster
    {
        get
        {
            Requires.Etcd();
            return _cluster ??= EtcdCluster.Launch(3);
        }
    }

    /// <summary>The cluster if a test started it (a skipped test did not).</summary>
    public EtcdCluster? Launched => _cluster;

    public void Dispose() => _cluster?.Dispose();
}

/// <summary>
/// Several real daemons (<c>--dataplane none</c>, <c>--store etcd3</c>) watching one three-member etcd: a change made
/// through one daemon's API reaches every daemon's dataplane, and losing a member, compacting history past a watch
/// that fell behind, or losing a member in the middle of creates misses no change: at the end every daemon's
/// dataplane equals a full read of the store. The sync period is far beyond each test, so only the watch and the
/// resyncs it asks for can make a daemon converge.
/// </summary>
public sealed class EtcdClusterTests(EtcdClusterFixture fixture) : IClassFixture<EtcdClusterFixture>, IAsyncDisposable
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly TimeSpan Converge = TimeSpan.FromSeconds(60);

    private readonly string _prefix = $"/merlin-cluster-{Guid.NewGuid():N}";
    private readonly List<RunningDaemon> _daemons = [];

    private EtcdCluster Cluster => fixture.Cluster;

    /// <summary>Starts a daemon on the cluster (every member, or the given ones only).</summary>
    private Task<RunningDaemon> StartDaemonAsync(params int[] members) => StartDaemonAsync("information", members);

    private async Task<RunningDaemon> StartDaemonAsync(string logLevel, params int[] members)
    {
        var endpoints = members.Length == 0 ? Cluster.Endpoints : members.Select(i => Cluster.Members[i].Endpoint).ToArray();
        var daemon = await RunningDaemon.StartAsync(o => o with
        {
            StoreBackend = "etcd3", StoreEndpoints = endpoints, StorePrefix = _prefix,
            StoreTimeout = TimeSpan.FromSeconds(2), SyncPeriod = TimeSpan.FromHours(1), LogLevel = logLevel,
        });
        _daemons.Add(daemon);
        return daemon;
    }

    private EtcdStore OpenStore() => new(new EtcdStoreOptions { Endpoints = Cluster.Endpoints, Prefix = _prefix, Timeout = TimeSpan.FromSeconds(5) });

    private static Wire.VirtualService Service(int i) => new()
    {
        Id = $"svc-{i}", Key = new() { Ip = $"198.18.0.{i + 1}", Port = 80, Protocol = Wire.Protocol.Tcp }, Config = new() { Scheduler = "mh" },
    };

    private static Wire.RealServer Server(int service, int j, uint weight = 1) => new()
    {
        ServiceID = $"svc-{service}", Key = new() { Ip = $"198.18.1.{j + 1}", Port = (uint)(8000 + service) },
        Config = new() { Weight = weight, Forward = Wire.ForwardMethod.Route },
    };

    private static uint? Weight(RunningDaemon daemon, int service, int j) =>
        daemon.Dataplane.State.Services.TryGetValue(Model.ServiceKey.ForAddress(IPAddress.Parse($"198.18.0.{service + 1}"), 80, Model.Protocol.Tcp), out var s)
        && s.Servers.TryGetValue(new Model.RealServerKey(IPAddress.Parse($"198.18.1.{j + 1}"), (ushort)(8000 + service)), out var c) ? c.Weight : null;

    /// <summary>Calls <paramref name="call"/> until it succeeds, as a client does across a lost member; bounded in time.</summary>
    private static async Task<T> UntilAcceptedAsync<T>(Func<Task<T>> call)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            try
            {
                return await call();
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded && DateTime.UtcNow < deadline)
            {
                await Task.Delay(100, Ct);
            }
        }
    }

    /// <summary>Waits until every daemon's dataplane equals a full read of the store, and returns that read.</summary>
    private async Task<DataplaneState> WaitForAllEqualToStoreAsync()
    {
        await using var store = OpenStore();
        var deadline = DateTime.UtcNow + Converge;
        while (true)
        {
            var desired = DesiredState.Build(await store.ListAsync(Ct)).State;
            var behind = _daemons.Where(d => !d.Dataplane.State.SameAs(desired)).ToList();
            if (behind.Count == 0) return desired;
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"{behind.Count} of {_daemons.Count} daemons did not reach the store's state ({desired.Services.Count} services, " +
                            $"{desired.ServerCount} servers) within {Converge.TotalSeconds} s; first one's log:\n{behind[0].Logs.Text}\n{Cluster.Log}");
            await Task.Delay(100, Ct);
        }
    }

    [Fact]
    public async Task AWeightChangeThroughOneDaemon_ReachesEveryDaemonsDataplane()
    {
        for (var i = 0; i < 4; i++) await StartDaemonAsync();
        await _daemons[0].Extended.CreateServiceAsync(Service(0), cancellationToken: Ct);
        for (var j = 0; j < 3; j++) await _daemons[0].Extended.CreateServerAsync(Server(0, j), cancellationToken: Ct);
        await WaitForAllEqualToStoreAsync();

        await _daemons[3].Extended.UpdateServerAsync(Server(0, 1, weight: 7), cancellationToken: Ct);

        foreach (var daemon in _daemons) await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 0, 1) == 7);
        var store = await WaitForAllEqualToStoreAsync();
        Assert.Equal(3, store.ServerCount);
        Assert.All(_daemons, d => Assert.Equal(1u, Weight(d, 0, 0)));
    }

    // Skipped in session 11 after runs where a daemon's etcd channel kept picking the killed member for over 30 s; that no
    // longer reproduces (0 of 21 runs, alone and with the class, load 40-65). If it comes back, run with --log-level debug:
    // the daemon then logs the channel's balancer (which member each call picked, each subchannel's state).
    [Fact]
    public async Task AMemberLostAndBack_DuringAStreamOfWrites_NoDaemonMissesAChange()
    {
        await StartDaemonAsync("debug");
        for (var i = 1; i < 4; i++) await StartDaemonAsync();
        await _daemons[0].Extended.CreateServiceAsync(Service(0), cancellationToken: Ct);
        for (var j = 0; j < 10; j++) await _daemons[0].Extended.CreateServerAsync(Server(0, j), cancellationToken: Ct);
        await WaitForAllEqualToStoreAsync();

        // 120 weight changes, each retried until accepted, through the daemons in turn; member 1 is lost after
        // the 40th and back after the 80th. The last accepted weight of each server is what must be programmed.
        var accepted = new uint[10];
        for (var n = 0; n < 120; n++)
        {
            if (n == 40) Cluster.Stop(1);
            if (n == 80) Cluster.Start(1);
            var j = n % 10;
            var weight = (uint)(n + 2);
            var via = _daemons[n % _daemons.Count];
            await UntilAcceptedAsync(() => via.Extended.UpdateServerAsync(Server(0, j, weight), cancellationToken: Ct).ResponseAsync);
            accepted[j] = weight;
        }

        var store = await WaitForAllEqualToStoreAsync();
        for (var j = 0; j < 10; j++) Assert.All(_daemons, d => Assert.Equal(accepted[j], Weight(d, 0, j)));
        Assert.Equal(10, store.ServerCount);
        // At debug the daemon's log shows its etcd channel giving up on the lost member's connection.
        var lost = new Uri(Cluster.Members[1].Endpoint).Port;
        Assert.Contains(_daemons[0].Logs.Text.Split('\n'), l => l.Contains($"error connecting to socket 127.0.0.1:{lost}", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ACompactionPastAWatchThatFellBehind_TheDaemonResyncs_AndMissesNoChange()
    {
        for (var i = 0; i < 3; i++) await StartDaemonAsync();
        // This daemon reaches etcd through member 2 only: while that member is away its watch falls behind.
        var behind = await StartDaemonAsync(2);
        await _daemons[0].Extended.CreateServiceAsync(Service(0), cancellationToken: Ct);
        for (var j = 0; j < 5; j++) await _daemons[0].Extended.CreateServerAsync(Server(0, j), cancellationToken: Ct);
        await WaitForAllEqualToStoreAsync();

        Cluster.Stop(2);
        for (var n = 0; n < 30; n++)
            await UntilAcceptedAsync(() => _daemons[n % 3].Extended.UpdateServerAsync(Server(0, n % 5, (uint)(n + 2)), cancellationToken: Ct).ResponseAsync);
        await UntilAcceptedAsync(() => _daemons[1].Extended.CreateServiceAsync(Service(1), cancellationToken: Ct).ResponseAsync);
        await UntilAcceptedAsync(() => _daemons[1].Extended.CreateServerAsync(Server(1, 0), cancellationToken: Ct).ResponseAsync);
        await using (var store = OpenStore())
        {
            // History up to now is gone: the behind daemon's watch cannot resume where it stopped.
            await store.CompactAsync(await store.GetRevisionAsync(Ct), Ct);
        }
        Cluster.Start(2);

        var desired = await WaitForAllEqualToStoreAsync();
        Assert.Equal(2, desired.Services.Count);
        for (var j = 0; j < 5; j++) Assert.Equal((uint)(25 + j + 2), Weight(behind, 0, j));
        var deadline = DateTime.UtcNow + Converge;
        while (!behind.Logs.Text.Contains("compacted", StringComparison.Ordinal) && DateTime.UtcNow < deadline) await Task.Delay(100, Ct);
        Assert.Contains("compacted", behind.Logs.Text);
        // After its resync the watch follows again: a later change arrives without another resync.
        await _daemons[0].Extended.UpdateServerAsync(Server(1, 0, weight: 9), cancellationToken: Ct);
        await behind.WaitForDataplaneAsync(_ => Weight(behind, 1, 0) == 9);
        await WaitForAllEqualToStoreAsync();
    }

    [Fact]
    public async Task AMemberThatDiesMidWrite_EachCreateSucceedsOrFailsClearly_NothingIsHalfWritten()
    {
        for (var i = 0; i < 3; i++) await StartDaemonAsync();
        var leader = await LeaderAsync();

        // 60 creates of a service with its two servers, 6 at a time through the three daemons; the leader is killed
        // once 15 have finished, while others are in flight.
        var outcomes = new (StatusCode Code, string Detail)[60];
        var finished = 0;
        var killed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var next = -1;
        var writers = Enumerable.Range(0, 6).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < 60)
            {
                var via = _daemons[i % 3];
                try
                {
                    await via.Extended.CreateServiceAsync(Service(i), cancellationToken: Ct);
                    await via.Extended.CreateServerAsync(Server(i, 0), cancellationToken: Ct);
                    await via.Extended.CreateServerAsync(Server(i, 1), cancellationToken: Ct);
                    outcomes[i] = (StatusCode.OK, "");
                }
                catch (RpcException e)
                {
                    outcomes[i] = (e.StatusCode, e.Status.Detail);
                }
                if (Interlocked.Increment(ref finished) == 15)
                {
                    Cluster.Stop(leader);
                    killed.SetResult();
                }
            }
        }).ToList();
        await Task.WhenAll(writers);
        await killed.Task;

        TestContext.Current.TestOutputHelper?.WriteLine(string.Join("\n", outcomes.Select((o, i) => $"svc-{i}: {o.Code} {o.Detail}")));
        // A failure says what went wrong, in a code a client can act on.
        foreach (var (code, detail) in outcomes.Where(o => o.Code != StatusCode.OK))
        {
            Assert.Contains(code, new[] { StatusCode.Unavailable, StatusCode.DeadlineExceeded });
            Assert.False(string.IsNullOrWhiteSpace(detail));
        }

        // Every accepted create is whole in the store; a failed one is there whole or not at all.
        await using var store = OpenStore();
        var snapshot = await store.ListAsync(Ct);
        var services = snapshot.Items.ToDictionary(s => s.Service.Id);
        for (var i = 0; i < 60; i++)
        {
            if (outcomes[i].Code == StatusCode.OK)
            {
                Assert.True(services.TryGetValue($"svc-{i}", out var item), $"svc-{i} was accepted but is not in the store");
                Assert.Equal(2, item.Servers.Count);
            }
        }
        Assert.Empty(snapshot.Orphans);
        Assert.All(services.Values, s => Assert.True(s.Service.Service is not null && s.Service.Problem is null, $"{s.Service.Id} is incomplete"));
        // The service-key index names exactly the stored services (it is written in each create's transaction).
        using var channel = GrpcChannel.ForAddress(Cluster.Members[(leader + 1) % 3].Endpoint);
        var kv = new Etcdserverpb.KV.KVClient(channel);
        var indexPrefix = $"{_prefix}/service-keys/";
        var index = await kv.RangeAsync(new Etcdserverpb.RangeRequest
        {
            Key = ByteString.CopyFromUtf8(indexPrefix), RangeEnd = ByteString.CopyFromUtf8(indexPrefix[..^1] + "0"),
        }, cancellationToken: Ct);
        Assert.Equal(services.Keys.Order(), index.Kvs.Select(k => k.Value.ToStringUtf8()).Order());

        Cluster.Start(leader);
        var desired = await WaitForAllEqualToStoreAsync();
        Assert.Equal(services.Count, desired.Services.Count);
    }

    [Fact]
    public async Task ADaemonKilledMidPass_IsRestarted_AndEndsWithItsKernelEqualToTheStore()
    {
        Requires.Root();
        Requires.Command("nft", "apt-get install nftables");
        using var ns = new ScratchNamespace("kill");
        using var dir = new TempDir("kill");
        var api = await StartDaemonAsync(); // the API the writes go through (--dataplane none)
        // The daemon under test: a process with the nftables dataplane in the scratch namespace, killed and restarted.
        string[] args =
        [
            "--dataplane", "nftables", "--netns", ns.Name, "--hash-seed", "0x5eed1234",
            "--store-backend", "etcd3", "--store-endpoints", string.Join(',', Cluster.Endpoints), "--store-prefix", _prefix, "--store-timeout", "2s",
            "--reconcile-sync-period", "1h", "--port", LocalPorts.Free().ToString(), "--health-port", LocalPorts.Free().ToString(),
            "--state-dir", dir.Path, "--log-level", "information",
        ];

        await CreateMasqAsync(api, Enumerable.Range(0, 40), weight: 1);
        var daemon = DaemonProcess.Start(args);
        try
        {
            await WaitForKernelEqualToStoreAsync(ns, daemon);

            // A large change streams in: 20 services deleted, 40 added, every other server's weight changed. The
            // daemon is killed (SIGKILL) half-way, while it is applying what has arrived; the rest lands while it is down.
            var writes = new List<Func<Task>>();
            for (var i = 0; i < 20; i++) { var id = i; writes.Add(() => api.Extended.DeleteServiceAsync(new Google.Protobuf.WellKnownTypes.StringValue { Value = $"svc-{id}" }, cancellationToken: Ct).ResponseAsync); }
            for (var i = 20; i < 40; i++)
                for (var j = 0; j < 10; j += 2) { var (id, k) = (i, j); writes.Add(() => api.Extended.UpdateServerAsync(Masq(id, k, weight: 3), cancellationToken: Ct).ResponseAsync); }
            var added = Enumerable.Range(40, 40).ToList();
            for (var n = 0; n < writes.Count; n++)
            {
                await writes[n]();
                if (n == writes.Count / 2) daemon.Kill();
            }
            await CreateMasqAsync(api, added, weight: 2);

            daemon = DaemonProcess.Start(args);
            var desired = await WaitForKernelEqualToStoreAsync(ns, daemon);
            Assert.Equal(60, desired.Services.Count);
            Assert.Equal(600, desired.ServerCount);
        }
        finally
        {
            daemon.Kill();
        }
    }

    private static Wire.RealServer Masq(int service, int j, uint weight) => new()
    {
        ServiceID = $"svc-{service}", Key = new() { Ip = $"198.18.2.{j + 1}", Port = (uint)(8000 + service) },
        Config = new() { Weight = weight, Forward = Wire.ForwardMethod.Masq },
    };

    /// <summary>Creates the services (wrr) with 10 masquerading servers each, 8 calls at a time.</summary>
    private static async Task CreateMasqAsync(RunningDaemon api, IEnumerable<int> services, uint weight)
    {
        await Parallel.ForEachAsync(services, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = Ct }, async (i, ct) =>
        {
            var service = Service(i);
            service.Key.Ip = $"198.18.3.{i + 1}";
            service.Config.Scheduler = "wrr";
            await api.Extended.CreateServiceAsync(service, cancellationToken: ct);
            for (var j = 0; j < 10; j++) await api.Extended.CreateServerAsync(Masq(i, j, weight), cancellationToken: ct);
        });
    }

    /// <summary>Waits until what the kernel holds in the namespace equals a full read of the store.</summary>
    private async Task<DataplaneState> WaitForKernelEqualToStoreAsync(ScratchNamespace ns, DaemonProcess daemon)
    {
        await using var store = OpenStore();
        var deadline = DateTime.UtcNow + Converge;
        while (true)
        {
            var desired = DesiredState.Build(await store.ListAsync(Ct)).State;
            // A fresh reader each time: one adopts what the kernel holds once, then trusts what it wrote itself.
            using var kernel = new Merlin.Dataplane.Nftables.NftablesDataplane(new Merlin.Dataplane.Nftables.NftablesOptions { HashSeed = 0x5eed1234, NetworkNamespace = ns.Name },
                Microsoft.Extensions.Logging.Abstractions.NullLogger<Merlin.Dataplane.Nftables.NftablesDataplane>.Instance);
            var actual = await kernel.ReadAsync(Ct);
            if (actual.SameAs(desired)) return desired;
            if (DateTime.UtcNow > deadline || daemon.Exited)
                Assert.Fail($"the kernel holds {actual.Services.Count} services and {actual.ServerCount} servers, the store {desired.Services.Count} and {desired.ServerCount}; the daemon:\n{daemon.Output}");
            await Task.Delay(200, Ct);
        }
    }

    /// <summary>The index of the member that leads the cluster now.</summary>
    private async Task<int> LeaderAsync()
    {
        using var channel = GrpcChannel.ForAddress(Cluster.Members[0].Endpoint);
        var status = await new Etcdserverpb.Maintenance.MaintenanceClient(channel).StatusAsync(new Etcdserverpb.StatusRequest(), cancellationToken: Ct);
        using var members = GrpcChannel.ForAddress(Cluster.Members[0].Endpoint);
        var list = await new Etcdserverpb.Cluster.ClusterClient(members).MemberListAsync(new Etcdserverpb.MemberListRequest(), cancellationToken: Ct);
        var name = list.Members.Single(m => m.ID == status.Leader).Name;
        return Cluster.Members.ToList().FindIndex(m => m.Name == name);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var daemon in _daemons) await daemon.DisposeAsync();
        // A member a failed test left stopped is started again for the class's next test.
        if (fixture.Launched is not { } cluster) return;
        for (var i = 0; i < cluster.Members.Count; i++)
            if (!cluster.Members[i].IsRunning) cluster.Start(i);
    }
}

/// <summary>The merlin executable built beside the tests, started as a process that keeps running until killed by its PID.</summary>
internal sealed class DaemonProcess
{
    private readonly Process _process;
    private readonly System.Text.StringBuilder _output = new();

    private DaemonProcess(Process process) => _process = process;

    public bool Exited => _process.HasExited;

    public string Output { get { lock (_output) return _output.ToString(); } }

    public static DaemonProcess Start(IEnumerable<string> args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "merlin.dll"));
        foreach (var arg in args) start.ArgumentList.Add(arg);
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("MERLIN_", StringComparison.Ordinal)).ToList()) start.Environment.Remove(key);
        var daemon = new DaemonProcess(new Process { StartInfo = start });
        daemon._process.OutputDataReceived += (_, e) => daemon.Append(e.Data);
        daemon._process.ErrorDataReceived += (_, e) => daemon.Append(e.Data);
        daemon._process.Start();
        daemon._process.BeginOutputReadLine();
        daemon._process.BeginErrorReadLine();
        return daemon;
    }

    /// <summary>SIGKILL by PID (no shutdown of any kind), and waits for it to be gone.</summary>
    public void Kill()
    {
        if (_process.HasExited) return;
        _process.Kill(entireProcessTree: false);
        _process.WaitForExit(10_000);
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output)
        {
            if (_output.Length > 256 * 1024) _output.Remove(0, _output.Length - 128 * 1024);
            _output.AppendLine(line);
        }
    }
}
