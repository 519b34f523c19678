using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Original.Types;

namespace Merlin.Daemon.Tests;

/// <summary>A client built only from the original merlin contract, against the real daemon, on both stores.</summary>
public class OriginalClientTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static VirtualService Web(string id = "web", string ip = "198.18.0.10", uint port = 80) => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Ip = ip, Port = port, Protocol = Protocol.Tcp },
        Config = new VirtualService.Types.Config { Scheduler = "sh", Flags = { "flag-1", "flag-2" } },
    };

    private static RealServer Server(string serviceId, string ip, uint? weight = 1, ForwardMethod forward = ForwardMethod.Route) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = 80 },
        Config = new RealServer.Types.Config { Weight = weight, Forward = forward },
        HealthCheck = new RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health", Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(10)),
            Timeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)), UpThreshold = 2, DownThreshold = 1,
        },
    };

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory, MemberData(nameof(Backends))]
    public async Task CreateListUpdateDelete_RoundTripsThroughTheDaemon(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var client = daemon.Original;

        await client.CreateServiceAsync(Web(), cancellationToken: Ct);
        await client.CreateServerAsync(Server("web", "198.18.1.20"), cancellationToken: Ct);
        await client.CreateServerAsync(Server("web", "198.18.1.21", weight: 5, forward: ForwardMethod.Tunnel), cancellationToken: Ct);

        var list = await client.ListAsync(new Empty(), cancellationToken: Ct);
        var item = Assert.Single(list.Items);
        Assert.Equal("web", item.Service.Id);
        Assert.Equal("198.18.0.10", item.Service.Key.Ip);
        Assert.Equal(["flag-1", "flag-2"], item.Service.Config.Flags); // stored in the original's spelling
        Assert.Equal(2, item.Servers.Count);
        var tunnel = item.Servers.Single(s => s.Key.Ip == "198.18.1.21");
        Assert.Equal(5u, tunnel.Config.Weight);
        Assert.Equal(ForwardMethod.Tunnel, tunnel.Config.Forward);
        Assert.Equal("http://:8080/health", tunnel.HealthCheck.Endpoint);

        // Update changes config only; weight 0 and an empty endpoint are explicit values.
        await client.UpdateServiceAsync(new VirtualService { Id = "web", Config = new() { Scheduler = "wrr" } }, cancellationToken: Ct);
        await client.UpdateServerAsync(new RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.20", Port = 80 },
            Config = new() { Weight = 0 }, HealthCheck = new() { Endpoint = "" },
        }, cancellationToken: Ct);

        list = await client.ListAsync(new Empty(), cancellationToken: Ct);
        item = Assert.Single(list.Items);
        Assert.Equal("wrr", item.Service.Config.Scheduler);
        Assert.Empty(item.Service.Config.Flags); // flags belong to a scheduler: changing it resets them
        var drained = item.Servers.Single(s => s.Key.Ip == "198.18.1.20");
        Assert.Equal(0u, drained.Config.Weight);
        Assert.Equal(ForwardMethod.Route, drained.Config.Forward);
        Assert.True(string.IsNullOrEmpty(drained.HealthCheck?.Endpoint));

        await client.DeleteServerAsync(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.21", Port = 80 } }, cancellationToken: Ct);
        await client.DeleteServiceAsync(new StringValue { Value = "web" }, cancellationToken: Ct);
        Assert.Empty((await client.ListAsync(new Empty(), cancellationToken: Ct)).Items);
    }
}
