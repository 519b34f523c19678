using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.AspNetCore.Builder;
using Wire = Merlin.Contracts;

namespace Merlin.Agent.Tests;

/// <summary>
/// The agent against the real daemon (in this process, SQLite store, no dataplane) while the store's compatibility mode
/// go-merlin is on: the API refuses drains there (Go nodes would ignore the deadline), so on stop the agent sets its
/// servers to weight 0, waits the drain period, and deletes them — what a drain would have done.
/// </summary>
public sealed class AgentGoMerlinModeTests : IAsyncLifetime
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private readonly TempDir _dir = new("agent-daemon");
    private WebApplication _daemon = null!;
    private GrpcChannel _channel = null!;
    private Wire.Merlin.MerlinClient _api = null!;

    public async ValueTask InitializeAsync()
    {
        for (var attempt = 1; ; attempt++)
        {
            var port = LocalPorts.Free();
            _daemon = DaemonHost.Build(new DaemonOptions
            {
                Port = port, HealthPort = LocalPorts.Free(), StorePath = _dir.File("merlin.db"), StateDir = _dir.Path, DataplaneKind = "none",
                SyncPeriod = TimeSpan.FromSeconds(30),
            });
            try
            {
                await _daemon.StartAsync(Ct);
                _channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}");
                _api = new Wire.Merlin.MerlinClient(_channel);
                return;
            }
            catch (IOException) when (attempt < 5)
            {
                await _daemon.DisposeAsync(); // a port found free was taken before Kestrel bound it
            }
        }
    }

    [Fact]
    public async Task OnStop_ARefusedDrain_BecomesWeight0_ThenTheDrainPeriod_ThenTheDelete_LoggedOnce()
    {
        foreach (var (id, port) in new[] { ("web", 80u), ("dns", 53u) })
            await _api.CreateServiceAsync(new VirtualService { Id = id, Key = new() { Ip = "198.18.0.100", Port = port, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "rr" } }, cancellationToken: Ct);
        await _api.UpdateSettingsAsync(new Settings { Compatibility = "go-merlin" }, cancellationToken: Ct);
        // The agent's clock starts at the real one: its call deadlines are taken from it.
        var time = new FakeClock(DateTimeOffset.UtcNow);
        var logs = new ListLoggerFactory();
        var node = new NodeAttachment(new RecordingNode(), _dir.File("node.json"));
        var agent = new RealServerAgent(_api, node, new AgentOptions
        {
            Services = ["web", "dns"], Addresses = [IPAddress.Parse("198.18.0.51")], Weight = 3, DrainPeriod = TimeSpan.FromSeconds(30),
            DetachRetryLimit = TimeSpan.FromSeconds(7), // not to be mistaken for the drain wait
        }, time, new Microsoft.Extensions.Logging.Logger<RealServerAgent>(logs));

        using var stop = new CancellationTokenSource();
        var run = agent.RunAsync(stop.Token, CancellationToken.None);
        await WaitForAsync(async () => (await ServersAsync()).Count == 2 ? true : (bool?)null);
        Assert.All(await ServersAsync(), s => Assert.Equal(3u, s.Config.Weight));

        stop.Cancel();
        // Weight 0 at once (no new connections), the servers kept for their established ones; no deadline was stored.
        await WaitForAsync(async () => (await ServersAsync()) is { Count: 2 } s && s.All(r => r.Config.Weight == 0) ? true : null);
        Assert.All(await ServersAsync(), s => Assert.Null(s.DrainDeadline));
        await time.UntilPendingAsync(p => p.SequenceEqual([TimeSpan.FromSeconds(30)]), "the drain wait, 30 s, alone", Ct);
        time.Advance(TimeSpan.FromSeconds(29));
        Assert.Equal([TimeSpan.FromSeconds(1)], time.Pending); // still waiting, so nothing was deleted
        Assert.Equal(2, (await ServersAsync()).Count);
        Assert.False(run.IsCompleted);

        time.Advance(TimeSpan.FromSeconds(1));
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Empty(await ServersAsync());
        Assert.Null(node.Load()); // detached
        var refused = logs.Lines.Where(l => l.Contains("DrainServer refused", StringComparison.Ordinal)).ToList();
        Assert.Contains("drain_deadline: compatibility mode go-merlin is on", Assert.Single(refused));
        Assert.Contains("setting weight 0 instead", refused[0]);
        Assert.DoesNotContain(logs.Lines, l => l.Contains("failed, detaching anyway", StringComparison.Ordinal));
    }

    private async Task<List<RealServer>> ServersAsync() =>
        (await _api.ListAsync(new Empty(), cancellationToken: Ct)).Items.SelectMany(i => i.Servers).ToList();

    private static Task WaitForAsync(Func<Task<bool?>> condition) =>
        Poll.UntilAsync(async () => await condition() == true, "the servers' state", TimeSpan.FromSeconds(4), interval: TimeSpan.FromMilliseconds(20), ct: Ct);

    public async ValueTask DisposeAsync()
    {
        _channel?.Dispose();
        await _daemon.StopAsync(CancellationToken.None);
        await _daemon.DisposeAsync();
        _dir.Dispose();
    }
}
