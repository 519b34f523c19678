using System.Net;
using Google.Protobuf.WellKnownTypes;
using Merlin.Model;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// Health checks through the whole daemon: a real HTTP server on loopback plays the real server's health
/// endpoint; its verdict reaches the dataplane as a weight, <c>meradm list</c>, status and metrics.
/// </summary>
public sealed class HealthCheckDaemonTests : IAsyncLifetime
{
    private readonly TempDir _dir = new("health-daemon");
    private WebApplication? _backend;
    private volatile bool _healthy = true;
    private int _healthPort;
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        _backend = builder.Build();
        _backend.MapGet("/health", () => _healthy ? Results.Text("ok") : Results.StatusCode(503));
        await _backend.StartAsync(Ct);
        _healthPort = new Uri(_backend.Urls.First()).Port;
    }

    public async ValueTask DisposeAsync()
    {
        if (_backend is not null) await _backend.DisposeAsync();
        _dir.Dispose();
    }

    private Task<RunningDaemon> StartAsync() => RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") });

    private static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Model.Protocol.Tcp);

    private async Task CreateAsync(RunningDaemon daemon)
    {
        await daemon.Extended.CreateServiceAsync(new Wire.VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp }, Config = new() { Scheduler = "mh" },
        }, cancellationToken: Ct);
        await daemon.Extended.CreateServerAsync(new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "127.0.0.1", Port = 80 }, Config = new() { Weight = 5, Forward = Wire.ForwardMethod.Route },
            HealthCheck = new()
            {
                Endpoint = $"http://:{_healthPort}/health", Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
                Timeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)), UpThreshold = 2, DownThreshold = 2, // generous: a loaded CI machine must not flap
            },
        }, cancellationToken: Ct);
    }

    private uint Weight(RunningDaemon daemon) => daemon.Dataplane.State.Services.TryGetValue(Web, out var s) && s.Servers.Count == 1 ? s.Servers.Values.Single().Weight : uint.MaxValue;

    [Fact]
    public async Task AFailingCheck_TakesTheServerToWeightZero_AndBack_VisibleInListStatusAndMetrics()
    {
        await using var daemon = await StartAsync();
        await CreateAsync(daemon);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon) == 5);

        var list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        var health = Assert.Single(Assert.Single(list.Items).Health);
        Assert.Equal("up", health.Verdict);
        Assert.Equal("HTTP 200", health.Detail);

        _healthy = false;
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon) == 0);
        list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal("down", list.Items[0].Health[0].Verdict);
        Assert.Equal("HTTP 503", list.Items[0].Health[0].Detail);
        Assert.Equal(5u, list.Items[0].Servers[0].Config.Weight); // the store keeps the configured weight
        var status = await daemon.Extended.StatusAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal(1u, status.ServersDown);
        using (var http = daemon.Health())
        {
            var metrics = await http.GetStringAsync("/metrics", Ct);
            // /metrics is process-wide: other daemons in this test process may export the same series.
            Assert.Contains(metrics.Split('\n'), l => l.StartsWith("merlin_server_healthy{", StringComparison.Ordinal)
                && l.Contains("service=\"tcp:198.18.0.10:80\"", StringComparison.Ordinal) && l.Contains("server=\"127.0.0.1:80\"", StringComparison.Ordinal)
                && l.EndsWith("} 0", StringComparison.Ordinal));
        }

        _healthy = true;
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon) == 5);
        status = await daemon.Extended.StatusAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal(1u, status.ServersUp);
    }

    [Fact]
    public async Task ARestart_KeepsTheProgrammedWeight_UntilTheFirstVerdict()
    {
        await using var daemon = await StartAsync();
        await CreateAsync(daemon);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon) == 5);

        // The in-memory dataplane lives in the daemon, so this restart is the store and checks coming back over
        // a fresh, empty kernel table: a server the kernel does not hold waits at 0 for its first verdict.
        await daemon.RestartAsync();
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon) == 5);
        Assert.Equal("up", (await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct)).Items[0].Health[0].Verdict);
    }
}
