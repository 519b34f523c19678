using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Wire;

namespace Merlin.Daemon.Tests;

/// <summary>Inputs found by fuzzing the API (issue 20): each is refused with a named field and a code from our contract, never INTERNAL or UNKNOWN.</summary>
public class ApiHardeningTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task CreateWebAsync(RunningDaemon daemon)
    {
        await daemon.Extended.CreateServiceAsync(new VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "rr" },
        }, cancellationToken: Ct);
        await daemon.Extended.CreateServerAsync(Checked("198.18.1.1", new Duration { Seconds = 2 }, new Duration { Seconds = 1 }), cancellationToken: Ct);
    }

    private static RealServer Checked(string ip, Duration? period, Duration? timeout) => new()
    {
        ServiceID = "web",
        Key = new() { Ip = ip, Port = 80 },
        Config = new() { Weight = 1, Forward = ForwardMethod.Route },
        HealthCheck = new() { Endpoint = "http://:8080/health", Period = period, Timeout = timeout, UpThreshold = 1, DownThreshold = 1 },
    };

    [Fact]
    public async Task CreateServerAndUpdateServer_HealthDurationNotNormalizedOrOutOfBounds_IsInvalidArgumentNamingTheField()
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        await CreateWebAsync(daemon);
        var before = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        var one = new Duration { Seconds = 1 };
        Duration[] bad =
        [
            new() { Seconds = 1, Nanos = -1 },
            new() { Nanos = 1_000_000_000 },
            new() { Seconds = long.MaxValue },
            new() { Nanos = 100 }, // 100 ns: ~170 probes a second before there was a lower bound
        ];

        foreach (var duration in bad)
        {
            foreach (var (field, request) in new[]
            {
                ("health_check.period", Checked("198.18.1.2", duration, one)),
                ("health_check.timeout", Checked("198.18.1.2", new Duration { Seconds = 2 }, duration)),
            })
            {
                var create = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.CreateServerAsync(request, cancellationToken: Ct));
                Assert.Equal(StatusCode.InvalidArgument, create.StatusCode);
                Assert.StartsWith($"{field}:", create.Status.Detail);

                var update = request.Clone();
                update.Key.Ip = "198.18.1.1";
                update.Config = null;
                var updated = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.UpdateServerAsync(update, cancellationToken: Ct));
                Assert.Equal(StatusCode.InvalidArgument, updated.StatusCode);
                Assert.StartsWith($"{field}:", updated.Status.Detail);
            }
        }

        Assert.Equal(before, await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct));
    }

    [Fact]
    public async Task DrainServer_PeriodNotNormalized_IsInvalidArgumentNamingPeriod()
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        await CreateWebAsync(daemon);

        var e = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.DrainServerAsync(new DrainRequest
        {
            Server = new() { ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 } },
            Period = new Duration { Seconds = 1, Nanos = -1 },
        }, cancellationToken: Ct));

        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("period: {seconds: 1, nanos: -1} is not a valid duration", e.Status.Detail);
    }

    [Fact]
    public async Task DrainNodeAndUndrainNode_StateDirReplacedByAFile_AreFailedPreconditionNamingIt_NotUnknown()
    {
        using var dir = new Merlin.Testing.TempDir("node-drain");
        var state = dir.File("state");
        Directory.CreateDirectory(state);
        await using var daemon = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = dir.File("merlin.db"), StateDir = state });
        Assert.True((await daemon.Extended.DrainNodeAsync(new Empty(), cancellationToken: Ct)).NodeDrained);

        // Checked at start; replaced behind the daemon's back since.
        Directory.Delete(state, recursive: true);
        File.WriteAllText(state, "a file now");

        var undrain = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.UndrainNodeAsync(new Empty(), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, undrain.StatusCode);
        Assert.StartsWith($"cannot record the node's drain in --state-dir {state}:", undrain.Status.Detail);
        Assert.True((await daemon.Extended.StatusAsync(new Empty(), cancellationToken: Ct)).NodeDrained); // still drained, as recorded

        File.Delete(state);
        Directory.CreateDirectory(state);
        Assert.False((await daemon.Extended.UndrainNodeAsync(new Empty(), cancellationToken: Ct)).NodeDrained);
        Directory.Delete(state);
        File.WriteAllText(state, "a file again");
        var drain = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.DrainNodeAsync(new Empty(), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, drain.StatusCode);
        Assert.DoesNotContain(daemon.Logs.Lines, l => l.Contains(" Error ") || l.Contains("Exception was thrown by handler"));
    }
}
