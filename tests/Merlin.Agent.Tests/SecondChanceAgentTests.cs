using System.Net;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Hashing;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.Extensions.Logging;
using Wire = Merlin.Contracts;

namespace Merlin.Agent.Tests;

/// <summary>What the agent's second chance writes and says, against a scripted API and a recording kernel.</summary>
public sealed class SecondChanceAgentTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task AnIpv4AndAnIpv6MdTableService_EachGetRulesInTheirFamilysTable_HandingToAnAddressOfThatFamily()
    {
        static TableRecord Joined(string a, string b, string c) => TableRecord.Next(TableRecord.Of(MinimalDisruptionTable.Build([(a, 1), (b, 1)], 7)),
            [(a, 1), (b, 1), (c, 1)], DateTimeOffset.UnixEpoch, TimeSpan.FromHours(1), size: 7);
        var api = new FakeApi();
        api.Add(Service("web", "198.18.0.100", 80), Joined("198.18.0.11:80", "198.18.0.12:80", "198.18.0.13:80").Encode());
        api.Add(Service("web6", "2001:db8::100", 443), Joined("[2001:db8::11]:443", "[2001:db8::12]:443", "[2001:db8::13]:443").Encode());
        var kernel = new RecordingKernel();
        var agent = new SecondChanceAgent(api, kernel, new AgentOptions
        {
            Services = ["web", "web6"],
            Addresses = [IPAddress.Parse("198.18.0.13"), IPAddress.Parse("2001:db8::13")],
        }, new SecondChanceOptions(0x5eed1234), TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<SecondChanceAgent>.Instance);

        Assert.True(await agent.SyncAsync(Ct));
        Assert.False(await agent.SyncAsync(Ct));

        var script = Assert.Single(kernel.Scripts);
        var v4 = script[script.IndexOf("table ip merlin_chance {", StringComparison.Ordinal)..script.IndexOf("table ip6 merlin_chance\n", StringComparison.Ordinal)];
        var v6 = script[script.IndexOf("table ip6 merlin_chance {", StringComparison.Ordinal)..];
        Assert.Contains("198.18.0.100 . 80 : goto s_0", v4);
        Assert.DoesNotContain("2001:db8", v4);
        Assert.Contains("2001:db8::100 . 443 : goto s_1", v6);
        Assert.Contains("typeof numgen inc mod 7 : ip6 daddr", v6);
        Assert.Matches(@"elements = \{ \d : 2001:db8::1[12]", v6);
        Assert.DoesNotContain("198.18.", v6);
        Assert.Equal(["web", "web6"], agent.TableHashes.Keys);
    }

    [Theory]
    [InlineData(false)] // a server that sends the service with its table: one GetTable per service, no List
    [InlineData(true)]  // an older server (GetTable without the service): one List per pass besides
    public async Task APass_ReadsOnlyItsOwnServices_AndSkipsOneThatIsGone(bool olderServer)
    {
        var record = TableRecord.Next(TableRecord.Of(MinimalDisruptionTable.Build([("198.18.0.11:80", 1), ("198.18.0.12:80", 1)], 7)),
            [("198.18.0.11:80", 1), ("198.18.0.12:80", 1), ("198.18.0.13:80", 1)], DateTimeOffset.UnixEpoch, TimeSpan.FromHours(1), size: 7);
        var api = new FakeApi { OlderServer = olderServer };
        api.Add(Service("web", "198.18.0.100", 80), record.Encode());
        api.Add(Service("other", "198.18.0.101", 80), record.Encode());
        var kernel = new RecordingKernel();
        var agent = new SecondChanceAgent(api, kernel, new AgentOptions
        {
            Services = ["web", "gone"],
            Addresses = [IPAddress.Parse("198.18.0.13")],
        }, new SecondChanceOptions(0x5eed1234), TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<SecondChanceAgent>.Instance);

        Assert.True(await agent.SyncAsync(Ct));

        Assert.Equal(["web", "gone"], api.TablesAsked);
        Assert.Equal(olderServer ? 1 : 0, api.Lists);
        Assert.Contains("198.18.0.100 . 80 : goto s_0", Assert.Single(kernel.Scripts));
        Assert.Equal(["web"], agent.TableHashes.Keys);
    }

    private static VirtualService Service(string id, string ip, uint port) => new()
    {
        Id = id,
        Key = new() { Ip = ip, Port = port, Protocol = Protocol.Tcp },
        Config = new() { Scheduler = "mh", Flags = { "flag-2", "flag-3" } },
    };

    private sealed class RecordingKernel : ISecondChanceKernel
    {
        public List<string> Scripts { get; } = [];

        public Task RunAsync(string script, CancellationToken ct)
        {
            Scripts.Add(script);
            return Task.CompletedTask;
        }

        public Task<string?> ListCountersJsonAsync(string family, CancellationToken ct) => Task.FromResult<string?>(null);
    }

    private sealed class FakeApi : Wire.Merlin.MerlinClient
    {
        private readonly List<VirtualService> _services = [];
        private readonly Dictionary<string, byte[]> _tables = [];

        public void Add(VirtualService service, byte[] table)
        {
            _services.Add(service);
            _tables[service.Id] = table;
        }

        private static AsyncUnaryCall<T> Answer<T>(T response) =>
            new(Task.FromResult(response), Task.FromResult(new Metadata()), () => Grpc.Core.Status.DefaultSuccess, () => [], () => { });

        /// <summary>Answers GetTable without the service, as servers before that field did.</summary>
        public bool OlderServer { get; init; }

        public int Lists { get; private set; }

        public List<string> TablesAsked { get; } = [];

        public override AsyncUnaryCall<ListResponse> ListAsync(Empty request, CallOptions options)
        {
            Lists++;
            var list = new ListResponse();
            foreach (var s in _services) list.Items.Add(new ListResponse.Types.Item { Service = s });
            return Answer(list);
        }

        public override AsyncUnaryCall<ServiceTable> GetTableAsync(StringValue request, CallOptions options)
        {
            TablesAsked.Add(request.Value);
            if (!_tables.TryGetValue(request.Value, out var table))
                return new(Task.FromException<ServiceTable>(new RpcException(new Grpc.Core.Status(StatusCode.NotFound, $"service {request.Value} does not exist"))),
                    Task.FromResult(new Metadata()), () => new Grpc.Core.Status(StatusCode.NotFound, ""), () => [], () => { });
            return Answer(new ServiceTable { Table = ByteString.CopyFrom(table), Service = OlderServer ? null : _services.Single(s => s.Id == request.Value) });
        }
    }
}
