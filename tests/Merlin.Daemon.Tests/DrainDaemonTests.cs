using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Api;
using Merlin.Cli;
using Merlin.Model;
using Merlin.Store;
using Merlin.Store.Etcd;
using Merlin.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>Drain through the whole daemon: weight 0 at once, the time left in meradm, removal at the deadline, exactly once.</summary>
public class DrainDaemonTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Model.Protocol.Tcp);
    private static RealServerKey Rs(int i) => new(IPAddress.Parse($"198.18.1.{i}"), 80);

    private static async Task CreateAsync(RunningDaemon daemon, params int[] servers)
    {
        await daemon.Extended.CreateServiceAsync(new Wire.VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp }, Config = new() { Scheduler = "mh" },
        }, cancellationToken: Ct);
        foreach (var i in servers)
            await daemon.Extended.CreateServerAsync(new Wire.RealServer
            {
                ServiceID = "web", Key = new() { Ip = $"198.18.1.{i}", Port = 80 }, Config = new() { Weight = 5, Forward = Wire.ForwardMethod.Route },
            }, cancellationToken: Ct);
    }

    private static DrainRequest Drain(int server, TimeSpan period) => new()
    {
        Server = new Wire.RealServer { ServiceID = "web", Key = new() { Ip = $"198.18.1.{server}", Port = 80 } },
        Period = Duration.FromTimeSpan(period),
    };

    private static uint? Weight(RunningDaemon daemon, int server) =>
        daemon.Dataplane.State.Services.TryGetValue(Web, out var s) && s.Servers.TryGetValue(Rs(server), out var c) ? c.Weight : null;


    [Theory, MemberData(nameof(Backends))]
    public async Task Drain_WeightZeroAtOnce_TimeLeftInList_RemovedAtTheDeadline_UndrainRestores(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        await CreateAsync(daemon, 1, 2);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 1) == 5 && Weight(daemon, 2) == 5);

        // Server 2: drained, then undrained before its deadline: its configured weight returns.
        var (code, _, err) = await daemon.MeradmAsync("server", "drain", "web", "198.18.1.2:80", "--period", "1h");
        Assert.True(code == 0, err);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 2) == 0);
        (code, _, err) = await daemon.MeradmAsync("server", "undrain", "web", "198.18.1.2:80");
        Assert.True(code == 0, err);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 2) == 5);

        // Server 1: drained for 2 s; weight 0 at once, still programmed, the store keeps the configured weight.
        var started = DateTimeOffset.UtcNow;
        (code, _, err) = await daemon.MeradmAsync("server", "drain", "web", "198.18.1.1:80", "--period", "2s");
        Assert.True(code == 0, err);
        await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 1) == 0);
        var (_, table, _) = await daemon.MeradmAsync("list");
        Assert.Matches(@"198\.18\.1\.1:80\s+5 \(draining, (1|2)s left\)", table);
        var list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        var record = list.Items[0].Servers.Single(s => s.Key.Ip == "198.18.1.1");
        Assert.Equal(5u, record.Config.Weight);
        Assert.NotNull(record.DrainDeadline);
        Assert.Null(list.Items[0].Servers.Single(s => s.Key.Ip == "198.18.1.2").DrainDeadline);

        await daemon.WaitForDataplaneAsync(_ => Weight(daemon, 1) is null);
        Assert.True(DateTimeOffset.UtcNow - started >= TimeSpan.FromSeconds(1.9), "removed before its deadline");
        list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal("198.18.1.2", Assert.Single(list.Items[0].Servers).Key.Ip);
        Assert.Equal(5u, Weight(daemon, 2));
        Assert.Equal(1, daemon.Services.GetRequiredService<DrainExpiry>().Removed);
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task Drain_BadRequests_AreRefusedNamingTheField_AndChangeNothing(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        await CreateAsync(daemon, 1);
        var before = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);

        async Task<RpcException> Refused(DrainRequest request) =>
            await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.DrainServerAsync(request, cancellationToken: Ct));

        var e = await Refused(Drain(1, TimeSpan.Zero));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("period: 0s", e.Status.Detail);
        Assert.StartsWith("period: required", (await Refused(new DrainRequest { Server = Drain(1, TimeSpan.Zero).Server })).Status.Detail);
        Assert.StartsWith("server.key.ip:", (await Refused(new DrainRequest { Server = new() { ServiceID = "web", Key = new() { Ip = "nope", Port = 80 } }, Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(5)) })).Status.Detail);
        Assert.StartsWith("server:", (await Refused(new DrainRequest { Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(5)) })).Status.Detail);
        Assert.Equal(StatusCode.NotFound, (await Refused(Drain(9, TimeSpan.FromSeconds(5)))).StatusCode);
        var undrain = await Assert.ThrowsAsync<RpcException>(async () => await daemon.Extended.UndrainServerAsync(Drain(9, TimeSpan.Zero).Server, cancellationToken: Ct));
        Assert.Equal(StatusCode.NotFound, undrain.StatusCode);

        // CreateServer and UpdateServer do not drain, whatever the request carries.
        var sneaky = new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 }, Config = new() { Weight = 7 },
            DrainDeadline = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddSeconds(1)),
        };
        await daemon.Extended.UpdateServerAsync(sneaky, cancellationToken: Ct);
        var after = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Null(Assert.Single(after.Items[0].Servers).DrainDeadline);
        Assert.Equal(7u, after.Items[0].Servers[0].Config.Weight);
        Assert.Equal(before.Items[0].Servers[0].Key, after.Items[0].Servers[0].Key);
    }

    [Fact]
    public async Task TwoDaemonsOnOneEtcd_ADrainSurvivesARestart_AndEachServerIsRemovedExactlyOnce()
    {
        await using var a = await StartDaemonAsync("etcd3");
        await using var b = await StartDaemonAsync("etcd3");
        await CreateAsync(a, 1, 2, 3);
        await b.WaitForDataplaneAsync(_ => Weight(b, 1) == 5 && Weight(b, 2) == 5 && Weight(b, 3) == 5);

        await using var watcher = new EtcdStore(new EtcdStoreOptions { Endpoints = [Etcd.Server.Endpoint], Prefix = Prefix });
        var start = await watcher.GetRevisionAsync(Ct);

        // Server 1's deadline passes while daemon a is down; server 2's after it is back, with both running.
        await a.Extended.DrainServerAsync(Drain(1, TimeSpan.FromSeconds(1)), cancellationToken: Ct);
        await a.Extended.DrainServerAsync(Drain(2, TimeSpan.FromSeconds(4)), cancellationToken: Ct);
        await b.WaitForDataplaneAsync(_ => Weight(b, 1) == 0 && Weight(b, 2) == 0);
        var firstA = a.Services.GetRequiredService<DrainExpiry>();
        await a.StopAsync();
        await Task.Delay(TimeSpan.FromSeconds(1.5), Ct);
        await a.StartAsync();
        await a.WaitForDataplaneAsync(_ => Weight(a, 1) is null && Weight(a, 2) == 0 && Weight(a, 3) == 5);
        await a.Services.GetRequiredService<DrainExpiry>().Started.WaitAsync(TimeSpan.FromSeconds(15), Ct);

        await a.WaitForDataplaneAsync(_ => Weight(a, 2) is null);
        await b.WaitForDataplaneAsync(_ => Weight(b, 1) is null && Weight(b, 2) is null && Weight(b, 3) == 5);
        await Task.Delay(TimeSpan.FromSeconds(1), Ct); // time for a second delete, were there one

        // The history: one delete per drained server, nothing else deleted.
        await a.Extended.CreateServerAsync(new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.9", Port = 80 }, Config = new() { Weight = 1, Forward = Wire.ForwardMethod.Route },
        }, cancellationToken: Ct);
        var changes = new List<StoreChange>();
        await foreach (var change in watcher.WatchAsync(start, Ct))
        {
            changes.Add(change);
            if (change.Key.EndsWith("198.18.1.9:80", StringComparison.Ordinal)) break;
        }
        var deletes = changes.Where(c => c.Kind == StoreChangeKind.Delete).Select(c => c.Key).ToList();
        Assert.Equal(["servers/web/198.18.1.1:80", "servers/web/198.18.1.2:80"], deletes);
        // Each delete was made by one daemon, which counted it; the others found it done and said nothing.
        Assert.Equal(2, firstA.Removed + a.Services.GetRequiredService<DrainExpiry>().Removed + b.Services.GetRequiredService<DrainExpiry>().Removed);
        Assert.Equal(0ul, (await b.Extended.StatusAsync(new Empty(), cancellationToken: Ct)).ReconcileErrors);
        Assert.Equal(0ul, (await a.Extended.StatusAsync(new Empty(), cancellationToken: Ct)).ReconcileErrors);
    }
}
