using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using ServiceKey = Merlin.Model.ServiceKey;
using Microsoft.Extensions.DependencyInjection;
using Original.Types;

namespace Merlin.Daemon.Tests;

/// <summary>Error codes, atomicity and durability of the API as a user of the wire contract sees them.</summary>
public class ApiSemanticsTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static VirtualService Svc(string id, string ip = "198.18.0.10", uint port = 80, Protocol protocol = Protocol.Tcp, string scheduler = "rr") => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Ip = ip, Port = port, Protocol = protocol },
        Config = new VirtualService.Types.Config { Scheduler = scheduler },
    };

    private static RealServer Rs(string serviceId, string ip, uint port = 80, uint? weight = 1, ForwardMethod forward = ForwardMethod.Route) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = port },
        Config = new RealServer.Types.Config { Weight = weight, Forward = forward },
    };

    private static async Task<RpcException> Fails(Func<Task> call, StatusCode code, string? detail = null)
    {
        var e = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(code, e.StatusCode);
        if (detail is not null) Assert.Contains(detail, e.Status.Detail);
        return e;
    }

    public static TheoryData<string, string> BadServices => new()
    {
        { "empty", "id: required" },
        { "no-id", "id: required" },
        { "no-key", "key: required" },
        { "no-ip", "key.ip: required" },
        { "bad-ip", "key.ip: \"10.0.0.300\" is not an IPv4 or IPv6 address" },
        { "port-0", "key.port: required" },
        { "port-big", "key.port: 70000 is out of range" },
        { "no-protocol", "key.protocol: required" },
        { "bad-protocol", "key.protocol: 9 is not a known protocol" },
        { "no-config", "config: required" },
        { "no-scheduler", "config.scheduler: required" },
        { "bad-scheduler", "config.scheduler: \"foo\" is not an IPVS scheduler (one of rr, wrr" },
        { "bad-flag", "config.flags: \"mh-port\" is not a flag of this scheduler" },
    };

    private static VirtualService BadService(string kind)
    {
        var s = Svc("bad");
        switch (kind)
        {
            case "empty": return new VirtualService();
            case "no-id": s.Id = ""; break;
            case "no-key": s.Key = null; break;
            case "no-ip": s.Key.Ip = ""; break;
            case "bad-ip": s.Key.Ip = "10.0.0.300"; break;
            case "port-0": s.Key.Port = 0; break;
            case "port-big": s.Key.Port = 70000; break;
            case "no-protocol": s.Key.Protocol = Protocol.UnsetProtocol; break;
            case "bad-protocol": s.Key.Protocol = (Protocol)9; break;
            case "no-config": s.Config = null; break;
            case "no-scheduler": s.Config.Scheduler = ""; break;
            case "bad-scheduler": s.Config.Scheduler = "foo"; break;
            case "bad-flag": s.Config.Scheduler = "sh"; s.Config.Flags.Add("mh-port"); break;
        }
        return s;
    }

    [Theory, MemberData(nameof(BadServices))]
    public async Task CreateService_InvalidInput_IsInvalidArgumentNamingTheField_AndStoresNothing(string kind, string detail)
    {
        await using var daemon = await StartDaemonAsync("sqlite");
        await daemon.Original.CreateServiceAsync(Svc("keep", "198.18.0.99"), cancellationToken: Ct);
        var before = await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct);

        await Fails(async () => await daemon.Original.CreateServiceAsync(BadService(kind), cancellationToken: Ct), StatusCode.InvalidArgument, detail);

        Assert.Equal(before, await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct));
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task ListStream_SendsWhatListSends_InPartsOfWholeServices(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var c = daemon.Extended;
        for (var i = 0; i < 300; i++)
        {
            var id = $"svc-{i:D3}";
            await c.CreateServiceAsync(new Merlin.Contracts.VirtualService
            {
                Id = id,
                Key = new() { Ip = $"198.18.{i / 250}.{i % 250 + 1}", Port = 80, Protocol = Merlin.Contracts.Protocol.Tcp },
                Config = new() { Scheduler = "rr" },
            }, cancellationToken: Ct);
            if (i % 50 == 0)
                await c.CreateServerAsync(new Merlin.Contracts.RealServer { ServiceID = id, Key = new() { Ip = "198.19.0.1", Port = 80 }, Config = new() { Weight = 1, Forward = Merlin.Contracts.ForwardMethod.Route } }, cancellationToken: Ct);
        }
        var list = await c.ListAsync(new Empty(), cancellationToken: Ct);

        var parts = new List<Merlin.Contracts.ListResponse>();
        using (var call = c.ListStream(new Empty(), cancellationToken: Ct))
            await foreach (var part in call.ResponseStream.ReadAllAsync(Ct)) parts.Add(part);

        Assert.True(parts.Count >= 2, $"{parts.Count} part(s)");
        Assert.All(parts, p => Assert.InRange(p.Items.Count, 1, 256));
        Assert.Equal(list.Items, parts.SelectMany(p => p.Items));
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task ErrorCodes_FollowTheContract(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var c = daemon.Original;
        await c.CreateServiceAsync(Svc("web"), cancellationToken: Ct);
        await c.CreateServerAsync(Rs("web", "198.18.1.20"), cancellationToken: Ct);
        var before = await c.ListAsync(new Empty(), cancellationToken: Ct);

        await Fails(async () => await c.CreateServiceAsync(Svc("web", "198.18.0.11"), cancellationToken: Ct), StatusCode.AlreadyExists, "web");
        await Fails(async () => await c.CreateServiceAsync(Svc("other"), cancellationToken: Ct), StatusCode.AlreadyExists);
        await Fails(async () => await c.UpdateServiceAsync(Svc("nope"), cancellationToken: Ct), StatusCode.NotFound, "nope");
        await Fails(async () => await c.UpdateServiceAsync(Svc("web", "198.18.0.12"), cancellationToken: Ct), StatusCode.InvalidArgument, "key: is immutable");
        await Fails(async () => await c.UpdateServiceAsync(new VirtualService { Id = "web", Config = new() { Scheduler = "bogus" } }, cancellationToken: Ct), StatusCode.InvalidArgument, "config.scheduler");
        await Fails(async () => await c.DeleteServiceAsync(new StringValue { Value = "nope" }, cancellationToken: Ct), StatusCode.NotFound);
        await Fails(async () => await c.CreateServerAsync(Rs("nope", "198.18.1.20"), cancellationToken: Ct), StatusCode.NotFound, "nope");
        await Fails(async () => await c.CreateServerAsync(Rs("web", "198.18.1.20"), cancellationToken: Ct), StatusCode.AlreadyExists);
        await Fails(async () => await c.CreateServerAsync(Rs("web", "198.18.1.21", forward: ForwardMethod.UnsetForwardMethod), cancellationToken: Ct), StatusCode.InvalidArgument, "config.forward: required");
        await Fails(async () => await c.CreateServerAsync(Rs("web", "198.18.1.21", weight: null), cancellationToken: Ct), StatusCode.InvalidArgument, "config.weight: required");
        await Fails(async () => await c.CreateServerAsync(Rs("web", "2001:db8::1"), cancellationToken: Ct), StatusCode.InvalidArgument, "IPv6 but the service is IPv4");
        await Fails(async () => await c.CreateServerAsync(Rs("web", "198.18.1.21", port: 0), cancellationToken: Ct), StatusCode.InvalidArgument, "key.port");
        await Fails(async () => await c.UpdateServerAsync(Rs("web", "198.18.1.99"), cancellationToken: Ct), StatusCode.NotFound);
        await Fails(async () => await c.UpdateServerAsync(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.20", Port = 80 }, HealthCheck = new() { Endpoint = "ftp://:21/" } }, cancellationToken: Ct),
            StatusCode.InvalidArgument, "health_check.endpoint");
        await Fails(async () => await c.DeleteServerAsync(Rs("web", "198.18.1.99"), cancellationToken: Ct), StatusCode.NotFound);
        await Fails(async () => await c.DeleteServerAsync(new RealServer { ServiceID = "web" }, cancellationToken: Ct), StatusCode.InvalidArgument, "key");

        Assert.Equal(before, await c.ListAsync(new Empty(), cancellationToken: Ct));
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task DeleteService_RemovesItsServers_AndNeverTouchesALookalikeId(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var c = daemon.Original;
        await c.CreateServiceAsync(Svc("svc1", "198.18.0.1"), cancellationToken: Ct);
        await c.CreateServiceAsync(Svc("svc10", "198.18.0.10"), cancellationToken: Ct);
        await c.CreateServerAsync(Rs("svc1", "198.18.1.1"), cancellationToken: Ct);
        await c.CreateServerAsync(Rs("svc10", "198.18.1.10"), cancellationToken: Ct);
        await c.CreateServerAsync(Rs("svc10", "198.18.1.11"), cancellationToken: Ct);

        var list = await c.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Single(list.Items.Single(i => i.Service.Id == "svc1").Servers);
        Assert.Equal(2, list.Items.Single(i => i.Service.Id == "svc10").Servers.Count);

        await c.DeleteServiceAsync(new StringValue { Value = "svc1" }, cancellationToken: Ct);
        list = await c.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal("svc10", Assert.Single(list.Items).Service.Id);
        Assert.Equal(2, list.Items[0].Servers.Count);

        // Re-creating svc1 must not resurrect its old servers.
        await c.CreateServiceAsync(Svc("svc1", "198.18.0.1"), cancellationToken: Ct);
        list = await c.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Empty(list.Items.Single(i => i.Service.Id == "svc1").Servers);
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task Restart_LosesNothing_AndReprogramsTheDataplane(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        await daemon.Original.CreateServiceAsync(Svc("web"), cancellationToken: Ct);
        await daemon.Original.CreateServerAsync(Rs("web", "198.18.1.20", weight: 7), cancellationToken: Ct);
        await daemon.Original.CreateServiceAsync(Svc("v6", "2001:db8::10", 443, Protocol.Udp), cancellationToken: Ct);
        await daemon.Original.CreateServerAsync(Rs("v6", "2001:db8::20", 443), cancellationToken: Ct);
        var before = await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 2);

        await daemon.RestartAsync();

        Assert.Equal(before, await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct));
        await daemon.WaitForDataplaneAsync(s => s.Services.Count == 2 && s.ServerCount == 2);
        var web = daemon.Dataplane.State.Services[ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.0.10"), 80, Model.Protocol.Tcp)];
        Assert.Equal(7u, web.Servers.Single().Value.Weight);
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task ApiChanges_ReachTheDataplaneThroughTheWatch(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        await daemon.WaitForDataplaneAsync(_ => daemon.Loop.Passes > 0);

        await daemon.Original.CreateServiceAsync(Svc("web", scheduler: "mh"), cancellationToken: Ct);
        await daemon.Original.CreateServerAsync(Rs("web", "198.18.1.20"), cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 1);

        await daemon.Original.UpdateServerAsync(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.20", Port = 80 }, Config = new() { Weight = 0 } }, cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.Services.Values.Single().Servers.Values.Single().Weight == 0);

        await daemon.Original.DeleteServiceAsync(new StringValue { Value = "web" }, cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.Services.Count == 0);
    }

    [Fact]
    public async Task EtcdDown_CallsAreUnavailable_DaemonKeepsItsDataplane_AndRecovers()
    {
        await using var daemon = await StartDaemonAsync("etcd3");
        await daemon.Original.CreateServiceAsync(Svc("web"), cancellationToken: Ct);
        await daemon.Original.CreateServerAsync(Rs("web", "198.18.1.20"), cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 1);

        Etcd.Server.Stop();
        try
        {
            await Fails(async () => await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct), StatusCode.Unavailable, "store unavailable");
            await Fails(async () => await daemon.Original.CreateServiceAsync(Svc("new", "198.18.0.50"), cancellationToken: Ct), StatusCode.Unavailable);
            daemon.Loop.Trigger();
            await daemon.WaitForDataplaneAsync(_ => !daemon.Services.GetRequiredService<Reconciler.ReconcilerStatus>().Current.StoreReachable);
            Assert.Equal(1, daemon.Dataplane.State.ServerCount); // untouched while the store is away
            using var http = daemon.Health();
            var ready = await http.GetAsync("/readyz", Ct);
            Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        }
        finally
        {
            Etcd.Server.Start();
        }
        // etcd answers again, but the daemon's channel reconnects with backoff: until it has, a call still fails
        // Unavailable, and a client retries it (docs/operations.md, "What happens when…").
        string last = "";
        await Merlin.Testing.Poll.UntilAsync(async () =>
        {
            try
            {
                await daemon.Original.CreateServiceAsync(Svc("new", "198.18.0.50"), cancellationToken: Ct);
                return true;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
            {
                last = e.Status.Detail;
                return false;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.AlreadyExists)
            {
                return true;   // an earlier try went through after all
            }
        }, "a create to succeed once etcd is back", TimeSpan.FromSeconds(30), () => last, TimeSpan.FromMilliseconds(200), Ct);
        await daemon.WaitForDataplaneAsync(s => s.Services.Count == 2);
    }

    [Fact]
    public async Task Etcd_RecordsOfTheOriginalLayout_AreReadAsIs_AndOursAreReadableRaw()
    {
        await using var daemon = await StartDaemonAsync("etcd3");
        using var channel = GrpcChannel.ForAddress(Etcd.Server.Endpoint);
        var raw = new EtcdClient(channel.CreateCallInvoker());

        // Written the way the Go merlin wrote them: protobuf bytes under <prefix>/services/<id> and <prefix>/servers/<id>/<ip>:<port>.
        var legacy = Svc("legacy", "198.18.0.77", 8080, scheduler: "sh");
        legacy.Config.Flags.Add("flag-2");
        await raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8($"{Prefix}/services/legacy"), Value = legacy.ToByteString() }, cancellationToken: Ct);
        var legacyServer = Rs("legacy", "198.18.1.77", 8080, weight: 3);
        await raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8($"{Prefix}/servers/legacy/198.18.1.77:8080"), Value = legacyServer.ToByteString() }, cancellationToken: Ct);

        var list = await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct);
        var item = Assert.Single(list.Items);
        Assert.Equal(legacy, item.Service);
        Assert.Equal(legacyServer.Config, Assert.Single(item.Servers).Config);
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 1);

        await daemon.Original.CreateServiceAsync(Svc("ours", "198.18.0.78"), cancellationToken: Ct);
        await daemon.Original.CreateServerAsync(Rs("ours", "198.18.1.78", weight: 4), cancellationToken: Ct);
        var svcBytes = (await raw.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8($"{Prefix}/services/ours") }, cancellationToken: Ct)).Kvs.Single().Value;
        var srvBytes = (await raw.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8($"{Prefix}/servers/ours/198.18.1.78:80") }, cancellationToken: Ct)).Kvs.Single().Value;
        // The original's types read them, Merlin's mark (merlin_digest) set aside as a field they do not know.
        Assert.Equal(Svc("ours", "198.18.0.78"), VirtualService.Parser.WithDiscardUnknownFields(true).ParseFrom(svcBytes));
        Assert.Equal(4u, RealServer.Parser.ParseFrom(srvBytes).Config.Weight);
    }
}
