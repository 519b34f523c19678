using System.Net;
using System.Net.Sockets;
using System.Text;
using Merlin.Testing;

namespace Merlin.Health.Tests;

/// <summary>The response reader on exact bytes, whole and cut into single bytes.</summary>
public sealed class ResponseReaderTests
{
    private static (ResponseReader.Step Step, int Status, bool KeepAlive, int Unread) Read(string response, int chunk)
    {
        var bytes = Encoding.ASCII.GetBytes(response);
        var reader = new ResponseReader(new byte[HttpProbe.BufferSize]);
        var fed = 0;
        while (true)
        {
            var step = reader.Advance();
            if (step != ResponseReader.Step.NeedMore) return (step, reader.Status, reader.KeepAlive, bytes.Length - fed);
            if (fed == bytes.Length) return (step, reader.Status, reader.KeepAlive, 0);
            var free = reader.FreeSpace();
            var n = Math.Min(Math.Min(chunk, free.Length), bytes.Length - fed);
            bytes.AsSpan(fed, n).CopyTo(free.Span);
            reader.Received(n);
            fed += n;
        }
    }

    public static TheoryData<string, string, int, bool> Responses => new()
    {
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "Done", 200, true },
        { "HTTP/1.1 204 No Content\r\n\r\n", "Done", 204, true },
        { "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", "Done", 503, true },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nok\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n", "Done", 200, true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "Done", 200, false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "Done", 200, false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", "Done", 200, true },
        { "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n", "Done", 302, true },
        { "HTTP/1.1 200 OK\r\n\r\nbody until the server closes", "StopReading", 200, false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", "StopReading", 200, false },
        { "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "Done", 200, true },
        { "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "Done", 503, false },
        { "SSH-2.0-OpenSSH_9.2\r\n", "Malformed", 0, false },
        { "HTTP/1.1 2x0 OK\r\n\r\n", "Malformed", 0, false },
    };

    [Theory]
    [MemberData(nameof(Responses))]
    public void AResponse_IsFramedTheSame_WholeOrByteByByte(string response, string step, int status, bool keepAlive)
    {
        foreach (var chunk in new[] { response.Length, 1, 7 })
        {
            var read = Read(response, chunk);
            Assert.Equal((step, status, keepAlive), (read.Step.ToString(), read.Status, read.KeepAlive));
        }
    }

    [Fact]
    public void BytesAfterTheResponse_InTheSameRead_KeepTheStatusButNotTheConnection()
    {
        // Arriving later, they make the idle connection readable, and it is replaced before the next check.
        var read = Read("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 1000);
        Assert.Equal((ResponseReader.Step.StopReading, 200, false), (read.Step, read.Status, read.KeepAlive));
    }

    [Fact]
    public void AnIncompleteBody_WantsMore()
    {
        Assert.Equal(ResponseReader.Step.NeedMore, Read("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", 100).Step);
        Assert.Equal(ResponseReader.Step.NeedMore, Read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", 100).Step);
    }

    [Fact]
    public void HeadersLongerThanTheBuffer_AfterTheStatus_StopReadingButKeepTheStatus()
    {
        var read = Read("HTTP/1.1 200 OK\r\nX-Big: " + new string('a', HttpProbe.BufferSize) + "\r\n\r\n", 1000);
        Assert.Equal((ResponseReader.Step.StopReading, 200, false), (read.Step, read.Status, read.KeepAlive));
    }
}

/// <summary>The plain-HTTP probe against scripted servers on loopback: reuse, a closed kept connection, a stopped server.</summary>
public sealed class HttpProbeTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(2);
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private readonly HttpProbe _probe = new(networkNamespace: null, reuse: true);

    public void Dispose() => _probe.Dispose();

    private static Uri Endpoint(ScriptedServer server) => new($"http://check.invalid:{server.Port}/healthz");

    [Fact]
    public async Task ChecksOfOneServer_ShareOneConnection()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        for (var i = 0; i < 5; i++)
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));

        Assert.Equal(1, server.Accepted);
        Assert.Equal(5, server.Requests);
        Assert.Equal(1, _probe.Connects);
        Assert.Contains("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:", server.LastRequest);
        Assert.DoesNotContain("Connection: close", server.LastRequest);
    }

    [Fact]
    public async Task OneEndpointForTwoAddresses_NeverSharesTheirConnections()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive); // on 127.0.0.1 only
        var endpoint = Endpoint(server);
        Assert.True((await _probe.ProbeAsync(IPAddress.Loopback, endpoint, Timeout, Ct)).Healthy);
        Assert.Equal(new ProbeResult(false, "ConnectionRefused"), await _probe.ProbeAsync(IPAddress.Parse("127.0.0.2"), endpoint, Timeout, Ct));
        Assert.True((await _probe.ProbeAsync(IPAddress.Loopback, endpoint, Timeout, Ct)).Healthy);
        Assert.Equal(1, server.Accepted);
    }

    [Fact]
    public async Task AServerThatClosesAfterEachAnswer_WithoutSayingSo_IsStillHealthy()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.CloseSilently);
        for (var i = 0; i < 4; i++)
        {
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
            await server.WaitForClosedAsync(i + 1, Ct); // its close has reached us before the next check
        }
        Assert.Equal(4, server.Accepted);
    }

    [Fact]
    public async Task AKeptConnectionDroppedWithoutAnAnswer_IsRetriedOnAFreshOne()
    {
        // Every second request is read and the connection closed unanswered, as a server's idle timeout
        // racing with the request would: the check must not fail for it.
        using var server = new ScriptedServer(ScriptedServer.Mode.DropSecondRequest);
        for (var i = 0; i < 4; i++)
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
        Assert.True(server.Accepted >= 2, $"{server.Accepted} connections");
    }

    [Fact]
    public async Task AStoppedServer_FailsTheNextCheck_ThoughAConnectionWasKept()
    {
        var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        var endpoint = Endpoint(server);
        Assert.True((await _probe.ProbeAsync(IPAddress.Loopback, endpoint, Timeout, Ct)).Healthy);
        server.Dispose(); // listener and connections closed, as when the process dies

        var result = await _probe.ProbeAsync(IPAddress.Loopback, endpoint, Timeout, Ct);
        Assert.Equal(new ProbeResult(false, "ConnectionRefused"), result);
    }

    [Fact]
    public async Task AKeptConnectionThatStopsAnswering_TimesOut_WithoutAThrow()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        Assert.True((await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy);
        server.Mute = true;

        var result = await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), TimeSpan.FromMilliseconds(300), Ct);
        Assert.Equal(new ProbeResult(false, "no answer within 300 ms"), result);
        server.Mute = false;
        Assert.True((await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy); // a fresh connection
    }

    [Fact]
    public async Task WithoutReuse_EachCheckHasItsOwnConnection_AndSaysClose()
    {
        using var probe = new HttpProbe(networkNamespace: null, reuse: false);
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        for (var i = 0; i < 3; i++)
            Assert.True((await probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy);
        Assert.Equal(3, server.Accepted);
        Assert.Contains("Connection: close\r\n", server.LastRequest);
    }

    [Fact]
    public async Task AStopDuringACheck_EndsItAsCancelled()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Mute = true };
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var check = _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), TimeSpan.FromMinutes(1), stop.Token);
        await server.WaitForRequestAsync(Ct);
        stop.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => check);
    }

    [Fact]
    public async Task AnAnswerSplitAcrossManyReads_IsReadWhole_AndTheConnectionKept()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Piece = 5 };
        for (var i = 0; i < 3; i++)
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
        Assert.Equal(1, server.Accepted);
    }

    [Fact]
    public async Task AChunkedBody_InPieces_IsSkipped_AndTheConnectionKept()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive)
        {
            Response = Encoding.ASCII.GetBytes("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\ndown\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"),
            Piece = 7,
        };
        for (var i = 0; i < 3; i++)
            Assert.Equal(new ProbeResult(false, "HTTP 503"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
        Assert.Equal(1, server.Accepted);
        Assert.Equal(3, server.Requests);
    }

    [Fact]
    public async Task AnAnswerCutShortByTheServer_KeepsItsStatus_ButNotTheConnection()
    {
        // Content-Length promises more than comes before the close: the status counts (as with a
        // connection per check), the connection is not reused.
        using var server = new ScriptedServer(ScriptedServer.Mode.CloseSilently) { Response = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"u8.ToArray() };
        Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
        await server.WaitForClosedAsync(1, Ct);
        Assert.Equal(new ProbeResult(true, "HTTP 200"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
        Assert.Equal(2, server.Accepted);
    }

    [Fact]
    public async Task AServerThatNeverAnswers_ANewConnection_TimesOut()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Mute = true };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), TimeSpan.FromMilliseconds(200), Ct);
        Assert.Equal(new ProbeResult(false, "no answer within 200 ms"), result);
        Assert.InRange(clock.ElapsedMilliseconds, 190, 1500);
    }

    [Fact]
    public async Task Garbage_IsAFailedCheck_WithItsReason()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Response = "SSH-2.0-OpenSSH_9.2\r\n"u8.ToArray() };
        Assert.Equal(new ProbeResult(false, "not an HTTP/1 status line"), await _probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct));
    }

    [Fact]
    public async Task ManyServers_InOneBatch_EachAnswered_OnOneConnectionEach()
    {
        var servers = Enumerable.Range(0, 200).Select(_ => new ScriptedServer(ScriptedServer.Mode.KeepAlive)).ToList();
        try
        {
            var endpoints = servers.Select(Endpoint).ToList();
            for (var round = 0; round < 3; round++)
            {
                var results = new Collector(servers.Count);
                _probe.Submit(endpoints.Select((e, i) => new ProbeRequest(IPAddress.Loopback, e, Timeout, results.For(i))).ToList());
                var all = await results.Task.WaitAsync(TimeSpan.FromSeconds(20), Ct);
                Assert.All(all, r => Assert.Equal(new ProbeResult(true, "HTTP 200"), r));
            }
            Assert.All(servers, s => Assert.Equal((1, 3), (s.Accepted, s.Requests)));
            Assert.Equal(servers.Count, _probe.Connects);
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
        }
    }

    [Fact]
    public async Task ABatch_MixingUpDownAndSilentServers_GetsEachItsOwnResult()
    {
        using var up = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        using var silent = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Mute = true };
        var down = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        var downEndpoint = Endpoint(down);
        down.Dispose();
        var results = new Collector(3);
        _probe.Submit([
            new ProbeRequest(IPAddress.Loopback, Endpoint(silent), TimeSpan.FromMilliseconds(300), results.For(0)),
            new ProbeRequest(IPAddress.Loopback, downEndpoint, Timeout, results.For(1)),
            new ProbeRequest(IPAddress.Loopback, Endpoint(up), Timeout, results.For(2)),
        ]);
        var all = await results.Task.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Equal([new ProbeResult(false, "no answer within 300 ms"), new ProbeResult(false, "ConnectionRefused"), new ProbeResult(true, "HTTP 200")], all);
    }

    [Fact]
    public async Task ADisposedProbe_FailsChecksInsteadOfLosingThem()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive) { Mute = true };
        var probe = new HttpProbe(networkNamespace: null, reuse: true);
        var check = probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), TimeSpan.FromMinutes(1), Ct);
        await server.WaitForRequestAsync(Ct);
        probe.Dispose();
        Assert.False((await check.WaitAsync(TimeSpan.FromSeconds(5), Ct)).Healthy);
        Assert.False((await probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy);
    }

    [Fact]
    public async Task AnIdleLoop_PastItsSweep_WaitsInsteadOfSpinning()
    {
        // One check starts the loop thread; then nothing is due while several sweeps come and go.
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        using var probe = new HttpProbe(networkNamespace: null, reuse: true, idleLimit: TimeSpan.FromMilliseconds(50));
        Assert.True((await probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy);
        await Task.Delay(200, Ct);
        // This probe's own loop thread: other tests' probes run loop threads of the same name in parallel.
        var thread = $"/proc/self/task/{probe.LoopThreadId}";
        Assert.NotEqual(0, probe.LoopThreadId);
        Assert.Equal("merlin-http-pro", File.ReadAllText(Path.Combine(thread, "comm")).Trim());
        var before = CpuTicks(thread);
        await Task.Delay(1000, Ct);
        // A spinning loop would use about 100 ticks (a whole core) in that second.
        Assert.True(CpuTicks(thread) - before < 20, $"the idle probe thread used {CpuTicks(thread) - before} ticks in 1 s");
        // And the sweep did run: the unused server's connection was closed.
        await server.WaitForClosedAsync(1, Ct);

        static long CpuTicks(string task)
        {
            var stat = File.ReadAllText(Path.Combine(task, "stat"));
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[11]) + long.Parse(fields[12]); // utime + stime
        }
    }

    [Fact]
    public async Task ANamespaceThatDoesNotExist_FailsTheCheck_AndTheLoopGoesOn()
    {
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        using var probe = new HttpProbe(networkNamespace: $"merlin-no-such-{Guid.NewGuid():N}"[..30], reuse: true);
        var result = await probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct);
        Assert.False(result.Healthy);
        Assert.Contains("merlin-no-such-", result.Detail);
        Assert.False((await probe.ProbeAsync(IPAddress.Loopback, Endpoint(server), Timeout, Ct)).Healthy);
    }

    [Fact]
    public async Task ChecksInANamespace_ReachItsServer_AndLeaveNoThreadInIt()
    {
        Merlin.Testing.Requires.Root();
        using var ns = new Merlin.Testing.ScratchNamespace("probe");
        // The server listens on the namespace's own loopback: only a socket made in there reaches it.
        using var listener = Merlin.Linux.NetworkNamespace.CreateSocket(ns.Name, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(16);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var serving = Task.Run(async () =>
        {
            // Answers whatever it is sent (bounded: three connections, three requests each).
            for (var c = 0; c < 3; c++)
            {
                using var s = await listener.AcceptAsync(Ct);
                var buffer = new byte[1024];
                for (var r = 0; r < 3 && await s.ReceiveAsync(buffer, Ct) > 0; r++)
                    await s.SendAsync("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"u8.ToArray(), Ct);
            }
        }, Ct);
        using var probe = new HttpProbe(networkNamespace: ns.Name, reuse: true);
        for (var i = 0; i < 3; i++)
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await probe.ProbeAsync(IPAddress.Loopback, new Uri($"http://check.invalid:{port}/"), Timeout, Ct));
        Assert.Equal(3, probe.Connects);
        await serving.WaitAsync(TimeSpan.FromSeconds(5), Ct);

        // No thread of this process is left in the namespace (the loop entered it around socket(2) only).
        var identity = Merlin.Linux.NetworkNamespace.Identity(ns.Name);
        Assert.NotEqual(0UL, identity);
        var inside = $"net:[{identity}]";
        var threads = Directory.GetDirectories("/proc/self/task").Where(t => new FileInfo(Path.Combine(t, "ns/net")).LinkTarget == inside).ToList();
        Assert.Empty(threads);
        Assert.NotEqual(inside, new FileInfo("/proc/thread-self/ns/net").LinkTarget);
    }

    [Fact]
    public async Task TheScheduler_ThroughTheProbesLoop_SeesAServerGoDown()
    {
        // HealthProbes takes plain-HTTP checks in batches: results reach the checker on the probe's thread.
        using var probes = new HealthProbes();
        var checker = new HealthChecker(probes, TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<HealthChecker>.Instance);
        await using var _ = checker;
        var changes = 0;
        checker.Changed += () => Interlocked.Increment(ref changes);
        var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        var service = Merlin.Model.ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Merlin.Model.Protocol.Tcp);
        var rs = new Merlin.Model.RealServerKey(IPAddress.Loopback, (ushort)server.Port);
        checker.Track([new Merlin.Reconciler.HealthTarget(service, rs, new Merlin.Model.HealthCheck
        {
            Endpoint = Endpoint(server), Period = TimeSpan.FromMilliseconds(50), Timeout = TimeSpan.FromMilliseconds(200), UpThreshold = 1, DownThreshold = 2,
        })]);
        checker.Start();
        await WaitForAsync(() => checker.Verdict(service, rs) == Merlin.Model.HealthVerdict.Up);
        await WaitForAsync(() => checker.Succeeded >= 5);
        server.Dispose();
        await WaitForAsync(() => checker.Verdict(service, rs) == Merlin.Model.HealthVerdict.Down);
        Assert.Equal(2, Volatile.Read(ref changes));
        Assert.Equal(1, server.Accepted);
    }

    [Fact]
    public async Task TheSchedulerDrivenByTheProbe_StillRunsOtherSchemes_OnTheThreadPool()
    {
        using var probes = new HealthProbes();
        var checker = new HealthChecker(probes, TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<HealthChecker>.Instance);
        await using var _ = checker;
        using var server = new ScriptedServer(ScriptedServer.Mode.KeepAlive);
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(16);
        var tcpPort = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var service = Merlin.Model.ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Merlin.Model.Protocol.Tcp);
        var web = new Merlin.Model.RealServerKey(IPAddress.Loopback, (ushort)server.Port);
        var tcp = new Merlin.Model.RealServerKey(IPAddress.Loopback, (ushort)tcpPort);
        Merlin.Model.HealthCheck Check(string endpoint) => new()
        {
            Endpoint = new Uri(endpoint), Period = TimeSpan.FromMilliseconds(50), Timeout = TimeSpan.FromMilliseconds(500), UpThreshold = 1, DownThreshold = 1,
        };
        checker.Start(); // before Track: the probe's loop is asked again when the checks arrive
        checker.Track([
            new Merlin.Reconciler.HealthTarget(service, web, Check($"http://check.invalid:{server.Port}/healthz")),
            new Merlin.Reconciler.HealthTarget(service, tcp, Check($"tcp://check.invalid:{tcpPort}")),
        ]);
        await WaitForAsync(() => checker.Verdict(service, web) == Merlin.Model.HealthVerdict.Up && checker.Verdict(service, tcp) == Merlin.Model.HealthVerdict.Up);
        var before = server.Requests;
        await WaitForAsync(() => server.Requests >= before + 3); // it keeps its rhythm
    }

    private static Task WaitForAsync(Func<bool> condition) => Poll.UntilAsync(condition, "the probe's verdict or request", ct: Ct);

    /// <summary>Collects a batch's results, each on the probe's thread, into their request order.</summary>
    private sealed class Collector(int count)
    {
        private readonly ProbeResult[] _results = new ProbeResult[count];
        private readonly TaskCompletionSource<ProbeResult[]> _all = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _left = count;

        public Task<ProbeResult[]> Task => _all.Task;

        public ProbeCompletion For(int index) => new One(this, index);

        private sealed class One(Collector owner, int index) : ProbeCompletion
        {
            public override void Completed(ProbeResult result)
            {
                owner._results[index] = result;
                if (Interlocked.Decrement(ref owner._left) == 0) owner._all.TrySetResult(owner._results);
            }
        }
    }

    /// <summary>An HTTP/1.1 server on 127.0.0.1 that answers 200 "ok" with Content-Length, as told.</summary>
    private sealed class ScriptedServer : IDisposable
    {
        public enum Mode { KeepAlive, CloseSilently, DropSecondRequest }

        private static readonly byte[] Ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"u8.ToArray();
        private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        private readonly List<Socket> _connections = [];
        private readonly Mode _mode;
        private readonly CancellationTokenSource _stop = new();
        private int _accepted, _requests, _closed;

        public ScriptedServer(Mode mode)
        {
            _mode = mode;
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(16);
            Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
            _ = AcceptAsync();
        }

        public int Port { get; }
        public int Accepted => Volatile.Read(ref _accepted);
        public int Requests => Volatile.Read(ref _requests);
        public volatile string LastRequest = "";
        public volatile bool Mute;
        /// <summary>What each request gets (default: 200 "ok" with Content-Length).</summary>
        public byte[] Response = Ok;
        /// <summary>When above 0, the answer goes out in pieces of this many bytes, a few ms apart (several reads).</summary>
        public int Piece;

        public async Task WaitForClosedAsync(int count, CancellationToken ct)
        {
            while (Volatile.Read(ref _closed) < count) await Task.Delay(5, ct);
            await Task.Delay(20, ct); // the FIN is on its way to the client's socket
        }

        public async Task WaitForRequestAsync(CancellationToken ct)
        {
            while (LastRequest.Length == 0) await Task.Delay(5, ct);
        }

        private async Task AcceptAsync()
        {
            while (true)
            {
                Socket c;
                try { c = await _listener.AcceptAsync(_stop.Token); }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
                lock (_connections) _connections.Add(c);
                var index = Interlocked.Increment(ref _accepted);
                _ = ServeAsync(c, index);
            }
        }

        private async Task ServeAsync(Socket c, int index)
        {
            var buffer = new byte[4096];
            try
            {
                for (var onThis = 1; ; onThis++)
                {
                    var seen = 0;
                    while (buffer.AsSpan(0, seen).IndexOf("\r\n\r\n"u8) < 0)
                    {
                        var n = await c.ReceiveAsync(buffer.AsMemory(seen), _stop.Token);
                        if (n == 0) return;
                        seen += n;
                    }
                    LastRequest = Encoding.ASCII.GetString(buffer, 0, seen);
                    var request = Interlocked.Increment(ref _requests);
                    if (Mute) continue;
                    if (_mode == Mode.DropSecondRequest && request % 2 == 0) return;
                    if (Piece <= 0) await c.SendAsync(Response, _stop.Token);
                    else
                    {
                        for (var at = 0; at < Response.Length; at += Piece)
                        {
                            await c.SendAsync(Response.AsMemory(at, Math.Min(Piece, Response.Length - at)), _stop.Token);
                            await Task.Delay(3, _stop.Token);
                        }
                    }
                    if (_mode == Mode.CloseSilently) return;
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
            finally
            {
                c.Dispose();
                Interlocked.Increment(ref _closed);
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Dispose();
            lock (_connections) foreach (var c in _connections) c.Dispose();
        }
    }
}
