using System.Net;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.Extensions.Logging.Abstractions;
using Wire = Merlin.Contracts;

namespace Merlin.Agent.Tests;

/// <summary>The agent's calls to the API over its life, against a scripted API and a recorded node.</summary>
public sealed class RealServerAgentTests : IDisposable
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private readonly TempDir _dir = new("agent");
    private readonly FakeApi _api = new();
    private readonly FakeClock _time = new(DateTimeOffset.Parse("2026-11-26T12:00:00Z"));
    private readonly NodeAttachment _node;

    public RealServerAgentTests()
    {
        _node = new NodeAttachment(new RecordingNode(), _dir.File("node.json"));
        _api.Services.Add(new VirtualService { Id = "web", Key = new() { Ip = "198.18.0.100", Port = 80, Protocol = Protocol.Tcp } });
        _api.Services.Add(new VirtualService { Id = "web6", Key = new() { Ip = "2001:db8::100", Port = 443, Protocol = Protocol.Tcp } });
    }

    private RealServerAgent Agent(params string[] services) => new(_api, _node, new AgentOptions
    {
        Services = services,
        Addresses = [IPAddress.Parse("198.18.0.51"), IPAddress.Parse("2001:db8::51")],
        Weight = 3,
        HealthCheck = new RealServer.Types.HealthCheck { Endpoint = "http://:80/healthz", Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)) },
        DrainPeriod = TimeSpan.FromSeconds(30),
        // Not the drain period: each detach call arms a limit timer of this length, and a test waiting for the
        // drain wait must not mistake that timer for it.
        DetachRetryLimit = TimeSpan.FromSeconds(7),
    }, _time, NullLogger<RealServerAgent>.Instance);

    [Fact]
    public async Task Registers_EachServiceWithTheAddressOfItsVipsFamily_AndThePortOfItsVip()
    {
        using var stop = new CancellationTokenSource();
        var run = Agent("web", "web6").RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(() => _api.Calls.Count(c => c.Method == "CreateServer") == 2);
        var created = _api.Calls.Where(c => c.Method == "CreateServer").Select(c => (RealServer)c.Request).ToList();
        Assert.Equal(("web", "198.18.0.51", 80u, 3u), (created[0].ServiceID, created[0].Key.Ip, created[0].Key.Port, created[0].Config.Weight!.Value));
        Assert.Equal(("web6", "2001:db8::51", 443u), (created[1].ServiceID, created[1].Key.Ip, created[1].Key.Port));
        Assert.Equal(ForwardMethod.Route, created[0].Config.Forward);
        Assert.Equal("http://:80/healthz", created[0].HealthCheck.Endpoint);
        Assert.NotNull(_node.Load()); // attached
        await FinishAsync(stop, run);
    }

    [Fact]
    public async Task AServerThatExists_IsUpdatedAndUndrained()
    {
        _api.Fail["CreateServer"] = new Queue<StatusCode>([StatusCode.AlreadyExists]);
        using var stop = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(() => _api.Calls.Any(c => c.Method == "UndrainServer"));
        Assert.Equal(["List", "CreateServer", "UpdateServer", "UndrainServer"], _api.Calls.Select(c => c.Method));
        await FinishAsync(stop, run);
    }

    [Fact]
    public async Task OnStop_ItDrains_WaitsTheDrainPeriod_ThenDeletes_ThenDetaches()
    {
        using var stop = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(() => _api.Calls.Any(c => c.Method == "CreateServer"));
        stop.Cancel();
        await _time.UntilPendingAsync(p => p.SequenceEqual([TimeSpan.FromSeconds(30)]), "the drain wait, 30 s, alone", Ct);
        var drain = (DrainRequest)_api.Calls.Single(c => c.Method == "DrainServer").Request;
        Assert.Equal(("web", "198.18.0.51", 80u, TimeSpan.FromSeconds(30)), (drain.Server.ServiceID, drain.Server.Key.Ip, drain.Server.Key.Port, drain.Period.ToTimeSpan()));

        _time.Advance(TimeSpan.FromSeconds(29));
        Assert.Equal([TimeSpan.FromSeconds(1)], _time.Pending); // still waiting: nothing else can call the API
        Assert.DoesNotContain(_api.Calls, c => c.Method == "DeleteServer"); // established connections still have a second
        Assert.NotNull(_node.Load());
        _time.Advance(TimeSpan.FromSeconds(1));
        await run;
        Assert.Equal("DeleteServer", _api.Calls[^1].Method);
        Assert.Null(_node.Load()); // detached
    }

    [Fact]
    public async Task ASecondSignal_CutsTheDrainWaitShort()
    {
        using var stop = new CancellationTokenSource();
        using var hurry = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, hurry.Token);
        await WaitForAsync(() => _api.Calls.Any(c => c.Method == "CreateServer"));
        stop.Cancel();
        await WaitForAsync(() => _api.Calls.Any(c => c.Method == "DrainServer"));
        hurry.Cancel();
        await run;
        Assert.Equal("DeleteServer", _api.Calls[^1].Method);
    }

    [Fact]
    public async Task AnUnreachableDaemon_IsRetried_UntilItAnswers()
    {
        _api.Fail["CreateServer"] = new Queue<StatusCode>([StatusCode.Unavailable, StatusCode.Unavailable]);
        using var stop = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, CancellationToken.None);
        for (var retry = 1; retry <= 2; retry++)
        {
            var backoff = await _time.AdvanceToNextTimerAsync($"the wait before retry {retry}", Ct);
            Assert.InRange(backoff, TimeSpan.Zero, TimeSpan.FromSeconds(5));
        }
        await WaitForAsync(() => _api.Calls.Count(c => c.Method == "CreateServer") == 3);
        Assert.Empty(_time.Pending); // answered: no further retry
        await FinishAsync(stop, run);
    }

    [Fact]
    public async Task StoppedWhileTheDaemonIsUnreachable_ItDetachesAndEndsWithoutAnError()
    {
        _api.Fail["List"] = new Queue<StatusCode>(Enumerable.Repeat(StatusCode.Unavailable, 1000));
        using var stop = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(() => _api.Calls.Count > 0);
        stop.Cancel();
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.DoesNotContain(_api.Calls, c => c.Method != "List");
        Assert.Null(_node.Load());
    }

    [Fact]
    public async Task AServerAlreadyRemoved_AtDrainOrDelete_IsDone()
    {
        _api.Fail["DrainServer"] = new Queue<StatusCode>([StatusCode.NotFound]);
        _api.Fail["DeleteServer"] = new Queue<StatusCode>([StatusCode.NotFound]);
        using var stop = new CancellationTokenSource();
        var run = Agent("web").RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(() => _api.Calls.Any(c => c.Method == "CreateServer"));
        stop.Cancel();
        await FinishAsync(stop, run);
        Assert.Null(_node.Load());
    }

    [Fact]
    public async Task AMissingService_IsAnErrorNamingIt_AndLeavesTheNodeAsItWas()
    {
        var e = await Assert.ThrowsAsync<AgentConfigurationException>(() => Agent("web", "nosuch").RunAsync(CancellationToken.None, CancellationToken.None));
        Assert.Contains("\"nosuch\"", e.Message);
        Assert.StartsWith("--service:", e.Message);
        Assert.Null(_node.Load());
        Assert.DoesNotContain(_api.Calls, c => c.Method == "CreateServer");
    }

    [Fact]
    public async Task ARefusedRegistration_DetachesTheNodeAgain()
    {
        _api.Fail["CreateServer"] = new Queue<StatusCode>([StatusCode.PermissionDenied]);
        var e = await Assert.ThrowsAsync<RpcException>(() => Agent("web").RunAsync(CancellationToken.None, CancellationToken.None));
        Assert.Equal(StatusCode.PermissionDenied, e.StatusCode);
        Assert.Null(_node.Load());
    }

    /// <summary>Stops the agent and lets its drain period pass.</summary>
    private async Task FinishAsync(CancellationTokenSource stop, Task run)
    {
        stop.Cancel();
        // Only the drain wait: a detach call's limit timer (7 s) may be armed for a moment before it.
        await _time.UntilPendingAsync(p => p.SequenceEqual([TimeSpan.FromSeconds(30)]), "the drain wait, 30 s, alone", Ct);
        _time.Advance(TimeSpan.FromSeconds(30));
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);
    }

    private static Task WaitForAsync(Func<bool> condition) => Poll.UntilAsync(condition, "the agent's call", TimeSpan.FromSeconds(2), ct: Ct);

    public void Dispose() => _dir.Dispose();

    private sealed class FakeApi : Wire.Merlin.MerlinClient
    {
        private readonly Lock _lock = new();
        private readonly List<(string Method, IMessage Request)> _calls = [];

        public List<VirtualService> Services { get; } = [];

        /// <summary>Per method, the status codes its next calls fail with.</summary>
        public Dictionary<string, Queue<StatusCode>> Fail { get; } = [];

        public List<(string Method, IMessage Request)> Calls
        {
            get { lock (_lock) return [.. _calls]; }
        }

        private AsyncUnaryCall<T> Answer<T>(string method, IMessage request, T response)
        {
            Task<T> task;
            lock (_lock)
            {
                _calls.Add((method, request));
                task = Fail.TryGetValue(method, out var q) && q.TryDequeue(out var code)
                    ? Task.FromException<T>(new RpcException(new Grpc.Core.Status(code, $"scripted {code}")))
                    : Task.FromResult(response);
            }
            return new AsyncUnaryCall<T>(task, Task.FromResult(new Metadata()), () => Grpc.Core.Status.DefaultSuccess, () => [], () => { });
        }

        public override AsyncUnaryCall<ListResponse> ListAsync(Empty request, CallOptions options)
        {
            var list = new ListResponse();
            foreach (var s in Services) list.Items.Add(new ListResponse.Types.Item { Service = s });
            return Answer("List", request, list);
        }

        public override AsyncUnaryCall<Empty> CreateServerAsync(RealServer request, CallOptions options) => Answer("CreateServer", request, new Empty());
        public override AsyncUnaryCall<Empty> UpdateServerAsync(RealServer request, CallOptions options) => Answer("UpdateServer", request, new Empty());
        public override AsyncUnaryCall<Empty> DeleteServerAsync(RealServer request, CallOptions options) => Answer("DeleteServer", request, new Empty());
        public override AsyncUnaryCall<Empty> DrainServerAsync(DrainRequest request, CallOptions options) => Answer("DrainServer", request, new Empty());
        public override AsyncUnaryCall<Empty> UndrainServerAsync(RealServer request, CallOptions options) => Answer("UndrainServer", request, new Empty());
    }
}
