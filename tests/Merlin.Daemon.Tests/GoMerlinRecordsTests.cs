using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Model;
using Go = Original.Types;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// Records exactly as the Go merlin (v0.2.2) writes them into etcd — the bytes worked out from its code (its
/// meradm builds the request, its server stores it with proto.Marshal under services/&lt;id&gt; and
/// servers/&lt;id&gt;/&lt;ip&gt;:&lt;port&gt;) — read, programmed, listed and edited by the daemon; and records the
/// daemon wrote, edited the way the Go merlin edits them (a rollback), keeping what only Merlin knows.
/// </summary>
public class GoMerlinRecordsTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static byte[] Hex(string text) => Convert.FromHexString(text.Replace(" ", ""));

    // `meradm service add web tcp 198.18.0.10:80 -s sh -b flag-1,flag-2`: id, key {ip, port 80, TCP}, config {sh, flag-1, flag-2}.
    private static readonly byte[] GoWeb = Hex("0a 03 776562 12 11 0a 0b 3139382e31382e302e3130 10 50 18 01 1a 14 0a 02 7368 12 06 666c61672d31 12 06 666c61672d32");

    // `meradm server add web 198.18.1.1:8080 -w 1 -f route --health-endpoint http://:8080/health --health-period 5s
    // --health-timeout 1s --health-up 2 --health-down 3`: weight is a UInt32Value, durations are seconds only.
    private static readonly byte[] GoServer1 = Hex("0a 03 776562 12 0f 0a 0a 3139382e31382e312e31 10 903f 1a 06 0a 02 0801 10 01 " +
        "22 23 0a 15 0a 13 687474703a2f2f3a383038302f6865616c7468 12 02 0805 1a 02 0801 20 02 28 03");

    // `meradm server add web 198.18.1.2:8080 -w 0 -f tunnel`: weight 0 is an empty UInt32Value, and the Go meradm
    // always sends an empty health check (22 00), which its reconciler needs.
    private static readonly byte[] GoServer2 = Hex("0a 03 776562 12 0f 0a 0a 3139382e31382e312e32 10 903f 1a 04 0a 00 10 02 22 00");

    // The same server after `meradm server edit web 198.18.1.2:8080 -w 5`, as the Go merlin stores it.
    private static readonly byte[] GoServer2Weight5 = Hex("0a 03 776562 12 0f 0a 0a 3139382e31382e312e32 10 903f 1a 06 0a 02 0805 10 02 22 00");

    // web after `meradm service edit web -s mh`, as the Go merlin stores it: it keeps the flags.
    private static readonly byte[] GoWebMh = Hex("0a 03 776562 12 11 0a 0b 3139382e31382e302e3130 10 50 18 01 1a 14 0a 02 6d68 12 06 666c61672d31 12 06 666c61672d32");

    // Merlin's mark on its writes (RecordDigest): field 15, fixed64, FNV-1a 64 of the record's bytes before it. The Go
    // merlin's decoder (golang/protobuf v1.3.2, proto3) keeps it aside as an unknown field and programs the rest.
    private static byte[] MarkedByMerlin(byte[] goRecord, string mark) => [.. goRecord, .. Hex("79" + mark)];

    private EtcdClient Raw(GrpcChannel channel) => new(channel.CreateCallInvoker());

    private Task Put(EtcdClient raw, string key, byte[] value) =>
        raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8(Prefix + key), Value = ByteString.CopyFrom(value) }, cancellationToken: Ct);

    private async Task<byte[]?> Get(EtcdClient raw, string key)
    {
        var resp = await raw.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(Prefix + key) }, cancellationToken: Ct);
        return resp.Kvs.Count == 0 ? null : resp.Kvs[0].Value.ToByteArray();
    }

    private static Go.VirtualService Service(string id, string ip, string scheduler, params string[] flags) => new()
    {
        Id = id, Key = new() { Ip = ip, Port = 80, Protocol = Go.Protocol.Tcp }, Config = new() { Scheduler = scheduler, Flags = { flags } },
    };

    [Fact]
    public async Task GoRecords_AreProgrammedListedAndEdited_AsTheGoMerlinWouldStoreThem_AndOrphansStayOut()
    {
        using var channel = GrpcChannel.ForAddress(Etcd.Server.Endpoint);
        var raw = Raw(channel);
        await Put(raw, "/services/web", GoWeb);
        await Put(raw, "/servers/web/198.18.1.1:8080", GoServer1);
        await Put(raw, "/servers/web/198.18.1.2:8080", GoServer2);
        // Left by the Go merlin's `service del old`, which deletes only services/old.
        await Put(raw, "/servers/old/198.18.1.9:80", GoServer2);
        // Values the Go merlin's API accepted and Merlin's refuses: a flag rr does not use, an unknown scheduler
        // (which its own reconciler then panicked on), a key another service has, a weight of 2^31.
        await Put(raw, "/services/odd", Service("odd", "198.18.0.11", "rr", "flag-1").ToByteArray());
        await Put(raw, "/services/bad", Service("bad", "198.18.0.12", "foo").ToByteArray());
        await Put(raw, "/services/zdup", Service("zdup", "198.18.0.10", "rr").ToByteArray());
        await Put(raw, "/servers/odd/198.18.1.3:80", new Go.RealServer
        {
            ServiceID = "odd", Key = new() { Ip = "198.18.1.3", Port = 80 }, Config = new() { Weight = 2147483648, Forward = Go.ForwardMethod.Route }, HealthCheck = new(),
        }.ToByteArray());
        await Put(raw, "/servers/odd/198.18.1.4:80", new Go.RealServer
        {
            ServiceID = "odd", Key = new() { Ip = "198.18.1.4", Port = 80 }, Config = new() { Weight = 2, Forward = Go.ForwardMethod.Masq }, HealthCheck = new(),
        }.ToByteArray());
        await using var daemon = await StartDaemonAsync("etcd3");

        // Programmed: web with both servers (sh-fallback and sh-port), odd without its meaningless flag and without
        // the server the kernel would refuse; bad and zdup are reported and left out, as is the orphan.
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 3);
        var state = daemon.Dataplane.State;
        Assert.Equal(2, state.Services.Count);
        var web = state.Services[ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.0.10"), 80, Model.Protocol.Tcp)];
        Assert.Equal(SchedulerFlags.Flag1 | SchedulerFlags.Flag2, web.Config.Flags);
        // (198.18.1.1's weight follows its health check, which leads nowhere here.)
        Assert.Equal(["198.18.1.1:8080", "198.18.1.2:8080"], web.Servers.Keys.Order().Select(k => k.ToString()));
        Assert.Equal(Model.ForwardMethod.Route, web.Servers.Values.Min(c => c.Forward));
        Assert.Equal(0u, web.Servers.Single(s => s.Key.ToString() == "198.18.1.2:8080").Value.Weight);
        var odd = state.Services[ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.0.11"), 80, Model.Protocol.Tcp)];
        Assert.Equal(SchedulerFlags.None, odd.Config.Flags);
        Assert.Equal(2u, Assert.Single(odd.Servers).Value.Weight);
        var log = daemon.Logs.Text;
        Assert.Contains("services/odd", log);
        Assert.Contains("that flag is ignored; the service is programmed", log);
        Assert.Contains("services/bad", log);
        Assert.Contains("services/zdup", log);
        Assert.Contains("servers/odd/198.18.1.3:80", log);
        Assert.DoesNotContain("servers/old", log);

        // Listed byte for byte as stored; the orphan is not listed.
        var list = await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal(["bad", "odd", "web", "zdup"], list.Items.Select(i => i.Service.Id).Order());
        var webItem = list.Items.Single(i => i.Service.Id == "web");
        Assert.Equal(GoWeb, webItem.Service.ToByteArray());
        Assert.Equal([GoServer1, GoServer2], webItem.Servers.OrderBy(s => s.Key.Ip).Select(s => s.ToByteArray()));

        // Edited through Merlin with the Go meradm's requests: the bytes the Go merlin itself would have stored.
        await daemon.Original.UpdateServerAsync(new Go.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.2", Port = 8080 }, Config = new() { Weight = 5 }, HealthCheck = new(),
        }, cancellationToken: Ct);
        Assert.Equal(MarkedByMerlin(GoServer2Weight5, "dbc1c23ad45c1435"), await Get(raw, "/servers/web/198.18.1.2:8080"));
        await daemon.Original.UpdateServiceAsync(new Go.VirtualService { Id = "web", Config = new() { Scheduler = "mh" } }, cancellationToken: Ct);
        Assert.Equal(MarkedByMerlin(GoWebMh, "0d2790d3b8f1fe54"), await Get(raw, "/services/web"));
        // The Go types read Merlin's record as the Go merlin's own, the mark set aside.
        var goRead = Go.VirtualService.Parser.ParseFrom(await Get(raw, "/services/web"));
        Assert.Equal(GoWebMh, new Go.VirtualService { Id = goRead.Id, Key = goRead.Key, Config = goRead.Config }.ToByteArray());
        // An edit that changes nothing writes nothing: the mark alone is no change.
        await daemon.Original.UpdateServiceAsync(new Go.VirtualService { Id = "web", Config = new() { Scheduler = "mh" } }, cancellationToken: Ct);
        var unchanged = await raw.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(Prefix + "/services/web") }, cancellationToken: Ct);
        Assert.Equal(2, unchanged.Kvs[0].Version); // the Go merlin's put, and Merlin's one edit
        Assert.Equal(GoServer1, await Get(raw, "/servers/web/198.18.1.1:8080")); // untouched
        // The duplicate of web's key does not block edits of either (neither changes the key).
        await daemon.Original.UpdateServiceAsync(new Go.VirtualService { Id = "zdup", Config = new() { Scheduler = "wrr" } }, cancellationToken: Ct);

        // A service created again under the orphan's id starts without the orphan.
        await daemon.Original.CreateServiceAsync(Service("old", "198.18.0.13", "rr"), cancellationToken: Ct);
        Assert.Empty((await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct)).Items.Single(i => i.Service.Id == "old").Servers);
        Assert.Null(await Get(raw, "/servers/old/198.18.1.9:80"));
    }

    [Fact]
    public async Task MerlinsExtensions_SurviveEditsByTheGoMerlin_ForARollbackAndBack()
    {
        await using var daemon = await StartDaemonAsync("etcd3");
        var api = daemon.Extended;
        await api.CreateServiceAsync(new Wire.VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp },
            Config = new() { Scheduler = "mh", Flags = { "mh-port" }, PersistenceTimeout = 300 },
        }, cancellationToken: Ct);
        await api.CreateServerAsync(new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 },
            Config = new() { Weight = 3, Forward = Wire.ForwardMethod.Tunnel, TunnelType = Wire.TunnelType.Gue, TunnelPort = 6080, UpperThreshold = 100 },
        }, cancellationToken: Ct);
        await api.DrainServerAsync(new Wire.DrainRequest
        {
            Server = new() { ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 } }, Period = Duration.FromTimeSpan(TimeSpan.FromHours(1)),
        }, cancellationToken: Ct);
        var before = Wire.RealServer.Parser.ParseFrom((await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct)).Items[0].Servers[0].ToByteArray());

        // The Go merlin's UpdateServer and UpdateService: unmarshal (fields it does not know kept aside, as
        // golang/protobuf 1.3's XXX_unrecognized does, and as the original types here do), merge, marshal.
        using var channel = GrpcChannel.ForAddress(Etcd.Server.Endpoint);
        var raw = Raw(channel);
        var goServer = Go.RealServer.Parser.ParseFrom(await Get(raw, "/servers/web/198.18.1.1:80"));
        goServer.Config.Weight = 9;
        await Put(raw, "/servers/web/198.18.1.1:80", goServer.ToByteArray());
        var goService = Go.VirtualService.Parser.ParseFrom(await Get(raw, "/services/web"));
        goService.Config.Scheduler = "sh";
        await Put(raw, "/services/web", goService.ToByteArray());

        var item = (await api.ListAsync(new Empty(), cancellationToken: Ct)).Items.Single();
        Assert.Equal("sh", item.Service.Config.Scheduler);
        Assert.Equal(["flag-2"], item.Service.Config.Flags);
        Assert.Equal(300u, item.Service.Config.PersistenceTimeout);
        var server = Assert.Single(item.Servers);
        Assert.Equal(9u, server.Config.Weight);
        Assert.Equal(Wire.TunnelType.Gue, server.Config.TunnelType);
        Assert.Equal(6080u, server.Config.TunnelPort);
        Assert.Equal(100u, server.Config.UpperThreshold);
        Assert.Equal(before.DrainDeadline, server.DrainDeadline);
        // And the daemon programs them: persistence kept, the draining server at weight 0.
        await daemon.WaitForDataplaneAsync(s => s.Services.Values.Any(v => v.Config.Scheduler == "sh"));
        var programmed = daemon.Dataplane.State.Services.Values.Single();
        Assert.Equal(300u, programmed.Config.PersistenceTimeout);
        Assert.Equal(0u, Assert.Single(programmed.Servers).Value.Weight);
    }
}
