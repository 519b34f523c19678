using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Go = Original.Types;

namespace Merlin.Daemon.Tests;

/// <summary>
/// A fleet shared with a Go merlin is told from the store (issue 21): records without Merlin's mark (a Go create), with a
/// mark their content no longer matches (a Go edit of Merlin's record), and server keys whose service a Go merlin deleted
/// are counted by every daemon from its reconcile read, in <c>meradm status</c> and on /metrics.
/// </summary>
[Collection(ProcessMetricsCollection.Name)]
public class MixedFleetDetectionTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task Put(EtcdClient raw, string key, byte[] value) =>
        raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8(Prefix + key), Value = ByteString.CopyFrom(value) }, cancellationToken: Ct);

    private async Task<byte[]> Get(EtcdClient raw, string key) =>
        (await raw.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(Prefix + key) }, cancellationToken: Ct)).Kvs.Single().Value.ToByteArray();

    private static Go.RealServer GoServer(string id, string ip, uint weight) => new()
    {
        ServiceID = id, Key = new() { Ip = ip, Port = 80 }, Config = new() { Weight = weight, Forward = Go.ForwardMethod.Route }, HealthCheck = new(),
    };

    [Fact]
    public async Task RecordsAGoMerlinWrote_AndOrphansItLeft_AreCountedInStatusAndMetrics_UntilMerlinRewritesThem()
    {
        await using var daemon = await StartDaemonAsync("etcd3");
        var api = daemon.Original;
        await api.CreateServiceAsync(new Go.VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Go.Protocol.Tcp }, Config = new() { Scheduler = "rr" },
        }, cancellationToken: Ct);
        await api.CreateServerAsync(GoServer("web", "198.18.1.1", 1), cancellationToken: Ct);
        await api.CreateServerAsync(GoServer("web", "198.18.1.2", 1), cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 2);
        Assert.Equal(0, (await daemon.MeradmAsync("compat", "go-merlin")).Code);
        // While the mode is on, none is news too: nothing but Merlin has written the store.
        Assert.Matches(@"(?m)^mixed fleet +records last written by a Go merlin \(or an older Merlin\): 0 services, 0 servers$", (await daemon.MeradmAsync("status")).Out);

        // What a Go merlin sharing the store does: create a service and a server (no mark), edit one of Merlin's servers
        // (golang/protobuf keeps the mark, an unknown field to it, over the new weight), and `service del` a service,
        // which leaves its servers behind.
        using var channel = GrpcChannel.ForAddress(Etcd.Server.Endpoint);
        var raw = new EtcdClient(channel.CreateCallInvoker());
        await Put(raw, "/services/go", new Go.VirtualService
        {
            Id = "go", Key = new() { Ip = "198.18.0.11", Port = 80, Protocol = Go.Protocol.Tcp }, Config = new() { Scheduler = "wrr" },
        }.ToByteArray());
        await Put(raw, "/servers/go/198.18.1.3:80", GoServer("go", "198.18.1.3", 1).ToByteArray());
        var edited = Go.RealServer.Parser.ParseFrom(await Get(raw, "/servers/web/198.18.1.2:80"));
        edited.Config.Weight = 5;
        await Put(raw, "/servers/web/198.18.1.2:80", edited.ToByteArray());
        await Put(raw, "/servers/gone/198.18.1.4:80", GoServer("gone", "198.18.1.4", 1).ToByteArray());
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 3 && s.Services.Values.Any(v => v.Servers.Values.Any(c => c.Weight == 5)));

        var status = (await daemon.MeradmAsync("status")).Out;
        Assert.Matches(@"(?m)^mixed fleet +records last written by a Go merlin \(or an older Merlin\): 1 service, 2 servers, " +
            @"1 orphaned server key \(of services deleted by a Go merlin\)$", status);
        var json = (await daemon.MeradmAsync("status", "-o", "json")).Out;
        Assert.Contains("\"servicesNotByMerlin\": 1,", json);
        Assert.Contains("\"serversNotByMerlin\": 2,", json);
        Assert.Contains("\"orphanedServers\": 1", json);
        await AssertMetricsAsync(daemon, service: 1, server: 2, orphan: 1);

        // An edit through Merlin marks the record again; the orphan stays until an operator removes it.
        await api.UpdateServerAsync(new Go.RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.2", Port = 80 }, Config = new() { Weight = 6 } }, cancellationToken: Ct);
        await api.UpdateServiceAsync(new Go.VirtualService { Id = "go", Config = new() { Scheduler = "rr" } }, cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.Services.Values.Any(v => v.Config.Scheduler == "rr" && v.Servers.Count == 1) && s.Services.Values.Any(v => v.Servers.Values.Any(c => c.Weight == 6)));
        await WaitForStatusAsync(daemon, "0 services, 1 server, 1 orphaned server key");
        await AssertMetricsAsync(daemon, service: 0, server: 1, orphan: 1);
    }

    private static async Task WaitForStatusAsync(RunningDaemon daemon, string counts)
    {
        var status = "";
        for (var i = 0; i < 100 && !status.Contains(counts, StringComparison.Ordinal); i++)
        {
            if (i > 0) await Task.Delay(100, Ct);
            status = (await daemon.MeradmAsync("status")).Out;
        }
        Assert.Contains($"records last written by a Go merlin (or an older Merlin): {counts}", status);
    }

    private static async Task AssertMetricsAsync(RunningDaemon daemon, int service, int server, int orphan)
    {
        using var http = daemon.Health();
        var lines = (await http.GetStringAsync("/metrics", Ct)).Split('\n');
        Assert.Contains($"merlin_store_records_not_by_merlin{{kind=\"service\"}} {service}", lines);
        Assert.Contains($"merlin_store_records_not_by_merlin{{kind=\"server\"}} {server}", lines);
        Assert.Contains($"merlin_store_records_not_by_merlin{{kind=\"orphaned_server\"}} {orphan}", lines);
    }
}
