using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Testing;
using Merlin.Contracts;

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
        var before = await StoredAsync(daemon);
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

        Assert.Equal(before, await StoredAsync(daemon));
    }

    /// <summary>What the store holds (a list also carries health verdicts, which change on their own).</summary>
    private static async Task<string> StoredAsync(RunningDaemon daemon)
    {
        var list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        foreach (var item in list.Items) item.Health.Clear();
        return list.ToString();
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

    private static readonly Marshaller<byte[]> Bytes = Marshallers.Create(b => b, b => b);

    /// <summary>Bodies protobuf cannot parse: a zero tag, a length past the end, a truncated varint, a group never closed.</summary>
    private static readonly byte[][] Malformed = [[0x00], [0x0A, 0x05, 0x41], [0x08, 0xFF, 0xFF], [0x0B], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]];

    /// <summary>Calls <paramref name="method"/> with <paramref name="body"/> as its message bytes.</summary>
    private static async Task<RpcException> RawCallFails(Grpc.Net.Client.GrpcChannel channel, string method, byte[] body, string? token = null)
    {
        var headers = new Metadata();
        if (token is not null) headers.Add("authorization", $"Bearer {token}");
        var call = new Method<byte[], byte[]>(MethodType.Unary, "types.Merlin", method, Bytes, Bytes);
        return await Assert.ThrowsAsync<RpcException>(async () =>
            await channel.CreateCallInvoker().AsyncUnaryCall(call, null, new CallOptions(headers, cancellationToken: Ct), body));
    }

    private static IReadOnlyList<string> Errors(RunningDaemon daemon) =>
        daemon.Logs.Lines.Where(l => l.Contains(" Error ") || l.Contains(" Critical ")).ToList();

    [Fact]
    public async Task MalformedBody_IsInvalidArgument_LoggedOnceAsAWarning_NeverAsAnError()
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        await CreateWebAsync(daemon);
        var before = await StoredAsync(daemon);

        for (var i = 0; i < 200; i++)
        {
            var (method, message) = (i % 3) switch { 0 => ("CreateServer", "RealServer"), 1 => ("CreateService", "VirtualService"), _ => ("DrainServer", "DrainRequest") };
            var e = await RawCallFails(daemon.Channel, method, Malformed[i % Malformed.Length]);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith($"the request body is not a valid {message} message:", e.Status.Detail);
        }

        Assert.Equal(before, await StoredAsync(daemon)); // nothing stored, and the connection still serves
        Assert.Empty(Errors(daemon));
        var warning = Assert.Single(daemon.Logs.Lines, l => l.Contains("malformed"));
        Assert.Contains(" Warning ", warning);
    }

    [Fact]
    public async Task MalformedBody_FromACallerWithoutCredentials_IsUnauthenticated_AndLogsNoError()
    {
        using var dir = new TempDir("tokens");
        var tokens = dir.File("tokens");
        File.WriteAllText(tokens, "admin-token-0123456789abcdef admin\n");
        await using var daemon = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = dir.File("merlin.db"), TokensFile = tokens });

        for (var i = 0; i < 100; i++)
        {
            var e = await RawCallFails(daemon.Channel, "CreateServer", Malformed[i % Malformed.Length], token: i % 2 == 0 ? null : "not-a-token-of-this-daemon");
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        }
        var admin = await RawCallFails(daemon.Channel, "CreateServer", Malformed[0], token: "admin-token-0123456789abcdef");
        Assert.Equal(StatusCode.InvalidArgument, admin.StatusCode);

        Assert.Empty(Errors(daemon));
        // Only the admin's body was parsed: the refused ones never were (none counted before it).
        Assert.Contains("(0 more malformed requests since the last such line", Assert.Single(daemon.Logs.Lines, l => l.Contains("malformed")));
        Assert.Single(daemon.Logs.Lines, l => l.Contains("Refused CreateServer")); // at most one line per 10 s
    }

    [Fact]
    public async Task BrokenFrames_AreAnsweredByTheGrpcServer_WithoutAnErrorInTheLog()
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        using var http = new HttpClient();
        byte[][] frames =
        [
            [0, 0, 0, 0, 10, 0x0A, 0x01], // says 10 bytes, has 2
            [1, 0, 0, 0, 1, 0x00],        // compressed, with no grpc-encoding
            [0, 0, 0, 0, 0, 0, 0, 0],     // a second frame after the message
            [0, 0, 0],                    // a header cut short
        ];
        foreach (var frame in frames)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, $"http://127.0.0.1:{daemon.Options.Port}/types.Merlin/CreateServer")
            {
                Content = new ByteArrayContent(frame),
                Version = System.Net.HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            request.Content.Headers.ContentType = new("application/grpc");
            request.Headers.TryAddWithoutValidation("te", "trailers");
            using var response = await http.SendAsync(request, Ct);
            await response.Content.ReadAsByteArrayAsync(Ct);
            var status = response.TrailingHeaders.TryGetValues("grpc-status", out var t) ? t.Single()
                : response.Headers.TryGetValues("grpc-status", out var h) ? h.Single() : "none";
            Assert.True(status is "13" or "3" or "12", $"{Convert.ToHexString(frame)}: grpc-status {status}, HTTP {(int)response.StatusCode} {response.Version} {await response.Content.ReadAsStringAsync(Ct)} {string.Join(";", response.Headers.Select(h => h.Key + "=" + string.Join(",", h.Value)))}");
        }
        Assert.Empty(Errors(daemon));
    }

    [Fact]
    public async Task HugeValues_AreQuotedAsAShortPrefixWithTheirLength_AndTheSharedConnectionSurvives()
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        await CreateWebAsync(daemon);
        var huge = new string('a', 71_728);
        var ip = Checked("198.18.1.2", new Duration { Seconds = 2 }, new Duration { Seconds = 1 });
        ip.Key.Ip = huge;
        var scheduler = new VirtualService { Id = "web", Config = new() { Scheduler = huge } };
        var endpoint = Checked("198.18.1.1", null, null);
        endpoint.HealthCheck.Endpoint = "http://" + huge;
        endpoint.Config = null;

        // Concurrent calls share the channel's one HTTP/2 connection: a 70 KiB grpc-message used to fail them all.
        var list = daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct).ResponseAsync;
        foreach (var (field, call) in new (string, Func<Task>)[]
        {
            ("key.ip", async () => await daemon.Extended.CreateServerAsync(ip, cancellationToken: Ct)),
            ("config.scheduler", async () => await daemon.Extended.UpdateServiceAsync(scheduler, cancellationToken: Ct)),
            ("health_check.endpoint", async () => await daemon.Extended.UpdateServerAsync(endpoint, cancellationToken: Ct)),
        })
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith($"{field}:", e.Status.Detail);
            Assert.Matches(@"""[a-z:/]{64}…"" \(71,7\d\d characters\)", e.Status.Detail);
            Assert.True(e.Status.Detail.Length < 300, e.Status.Detail);
        }
        Assert.Single((await list).Items);
        Assert.Single((await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct)).Items);
    }
}
