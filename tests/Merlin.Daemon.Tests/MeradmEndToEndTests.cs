using System.Text.Json;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Net.Client;
using Merlin.Cli;

namespace Merlin.Daemon.Tests;

/// <summary>meradm against the real daemon, as an operator would use it.</summary>
public class MeradmEndToEndTests(EtcdFixture etcd) : BackendTestBase(etcd)
{

    [Theory, MemberData(nameof(Backends))]
    public async Task Meradm_ManagesServicesAndServers_EndToEnd(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);

        Assert.Equal(0, (await daemon.MeradmAsync("service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh", "-b", "mh-port")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("server", "add", "web", "198.18.1.21:80", "-w", "3", "-f", "route",
            "--health-endpoint", "http://:8080/healthz", "--health-period", "2s", "--health-timeout", "1s")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("service", "add", "web6", "udp", "[2001:db8::10]:53", "-s", "rr")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("server", "add", "web6", "[2001:db8::20]:53", "-w", "1", "-f", "masq")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("server", "edit", "web", "198.18.1.21:80", "-w", "0")).Code);

        var (code, table, _) = await daemon.MeradmAsync("list");
        Assert.Equal(0, code);
        Assert.Contains("198.18.0.10:80", table);
        Assert.Contains("mh-port", table);
        Assert.Contains("[2001:db8::20]:53", table);
        Assert.Contains("http://:8080/healthz", table);

        var (jsonCode, json, _) = await daemon.MeradmAsync("list", "--output", "json");
        Assert.Equal(0, jsonCode);
        using var doc = JsonDocument.Parse(json);
        var services = doc.RootElement.ValueKind == JsonValueKind.Array ? doc.RootElement : doc.RootElement.GetProperty("services");
        var web = services.EnumerateArray().Single(s => s.GetProperty("id").GetString() == "web");
        Assert.Equal(0, web.GetProperty("servers")[0].GetProperty("weight").GetInt64());

        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 2);

        var (badCode, _, badErr) = await daemon.MeradmAsync("service", "add", "bad", "tcp", "198.18.0.11:80", "-s", "foo");
        Assert.NotEqual(0, badCode);
        Assert.Contains("config.scheduler: \"foo\" is not an IPVS scheduler", badErr);

        var (dupCode, _, dupErr) = await daemon.MeradmAsync("service", "add", "web", "tcp", "198.18.0.12:80", "-s", "rr");
        Assert.NotEqual(0, dupCode);
        Assert.Contains("web", dupErr);

        Assert.Equal(0, (await daemon.MeradmAsync("service", "del", "web")).Code);
        var (_, after, _) = await daemon.MeradmAsync("list");
        Assert.DoesNotContain("198.18.0.10:80", after);

        var (statusCode, status, _) = await daemon.MeradmAsync("status");
        Assert.Equal(0, statusCode);
        Assert.Contains(backend == "sqlite" ? "sqlite" : "etcd", status);
    }

    [Fact]
    public async Task Meradm_ListsRecordsWrittenRawByTheOriginalMerlin()
    {
        await using var daemon = await StartDaemonAsync("etcd3");
        using var channel = GrpcChannel.ForAddress(Etcd.Server.Endpoint);
        var raw = new EtcdClient(channel.CreateCallInvoker());
        var svc = new Original.Types.VirtualService
        {
            Id = "legacy",
            Key = new() { Ip = "198.18.0.77", Port = 8080, Protocol = Original.Types.Protocol.Udp },
            Config = new() { Scheduler = "sh", Flags = { "flag-1" } },
        };
        await raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8($"{Prefix}/services/legacy"), Value = svc.ToByteString() }, cancellationToken: TestContext.Current.CancellationToken);

        var (code, table, _) = await daemon.MeradmAsync("list");

        Assert.Equal(0, code);
        Assert.Contains("legacy", table);
        Assert.Contains("198.18.0.77:8080", table);
        Assert.Contains("sh-fallback", table);
    }
}
