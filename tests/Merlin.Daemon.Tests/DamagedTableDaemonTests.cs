using System.Globalization;
using System.Text.RegularExpressions;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Hashing;
using Merlin.Testing;
using Microsoft.Data.Sqlite;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// A damaged stored md-table, end to end: the real daemon (API, store, reconciler) with the nftables dataplane in
/// a scratch namespace, on SQLite and on etcd. The record is overwritten in the store directly — the only way hostile
/// bytes get there (an operator with etcdctl or sqlite3, a Go merlin node) — and what a user sees is checked: the
/// kernel's map is always whole (every slot owned by a live server) and is the table any other node computes from
/// nothing, <c>meradm status</c> says RECOMPUTED, <c>merlin_tables_recomputed</c> goes to 1, and the API's next write
/// of the service stores a good record again.
/// </summary>
[Collection(ProcessMetricsCollection.Name)]
public sealed partial class DamagedTableDaemonTests : IClassFixture<EtcdFixture>, IDisposable
{
    private const uint Seed = 0x5eed1234;
    private readonly EtcdFixture _etcd;
    private readonly ScratchNamespace _ns;
    private readonly TempDir _dir = new("damaged-table");
    private readonly string _prefix = $"/merlin-test-{Guid.NewGuid():N}";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Long enough for a pass on a loaded 2-core machine.</summary>
    private static readonly TimeSpan Converge = TimeSpan.FromSeconds(60);

    public DamagedTableDaemonTests(EtcdFixture etcd)
    {
        Requires.Root();
        Requires.Command("nft", "apt-get install nftables");
        _etcd = etcd;
        _ns = new ScratchNamespace("mdtab");
    }

    public void Dispose()
    {
        _ns.Dispose();
        _dir.Dispose();
    }

    private Task<RunningDaemon> StartAsync(string backend) => RunningDaemon.StartAsync(o => (backend == "sqlite"
        ? o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") }
        : o with { StoreBackend = "etcd3", StoreEndpoints = [_etcd.Server.Endpoint], StorePrefix = _prefix, StoreTimeout = TimeSpan.FromSeconds(2) })
        with { DataplaneKind = "nftables", HashSeed = Seed, NetworkNamespace = _ns.Name });

    private static string Server(int i) => $"198.18.1.{i}:80";

    private static string[] Servers(params int[] i) => [.. i.Select(Server)];

    private static MinimalDisruptionTable FromNothing(params int[] servers) =>
        MinimalDisruptionTable.Build(servers.Select(i => (Server(i), 1u)).ToList());

    [Fact]
    public async Task OnEtcd_ADamagedRecord_IsRecomputedWhole_ThroughAGoMerlinsServerChange_UntilTheApisNextWriteReplacesIt()
    {
        await using var daemon = await StartAsync("etcd3");
        await CreateAsync(daemon, 4);
        await WaitForStoredTableInKernelAsync(daemon, Servers(1, 2, 3, 4));

        // An operator's etcdctl put (or a bad disk): one byte of the record changed, the hash no longer matches.
        using var channel = GrpcChannel.ForAddress(_etcd.Server.Endpoint);
        var raw = new EtcdClient(channel.CreateCallInvoker());
        var damaged = await StoredAsync(daemon);
        damaged[damaged.Length / 2] ^= 0x40;
        await raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8($"{_prefix}/tables/web"), Value = ByteString.CopyFrom(damaged) }, cancellationToken: Ct);

        await WaitForRecomputedAsync(daemon, FromNothing(1, 2, 3, 4), Servers(1, 2, 3, 4), "damaged (hash mismatch");

        // A Go merlin node adds a server: it writes the server's key and nothing else, so the damaged record stays.
        var added = new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.5", Port = 80 }, Config = new() { Weight = 1, Forward = Wire.ForwardMethod.Masq },
        };
        await raw.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8($"{_prefix}/servers/web/{Server(5)}"), Value = added.ToByteString() }, cancellationToken: Ct);
        await WaitForRecomputedAsync(daemon, FromNothing(1, 2, 3, 4, 5), Servers(1, 2, 3, 4, 5), "damaged (hash mismatch");
        Assert.Equal(damaged, await StoredAsync(daemon));

        // The API's next write of the service (a weight change) stores a good record: the one that follows from nothing,
        // as the record it replaced could not be read.
        await MustAsync(daemon, "server", "edit", "web", Server(5), "-w", "2");
        var repaired = MinimalDisruptionTable.Build([(Server(1), 1), (Server(2), 1), (Server(3), 1), (Server(4), 1), (Server(5), 2)]);
        await WaitForRepairedAsync(daemon, repaired, Servers(1, 2, 3, 4, 5));
    }

    [Fact]
    public async Task OnSqlite_ARecordOfTheWrongSize_IsRecomputedWhole_UntilTheApisNextWriteReplacesIt()
    {
        await using var daemon = await StartAsync("sqlite");
        await CreateAsync(daemon, 4);
        await WaitForStoredTableInKernelAsync(daemon, Servers(1, 2, 3, 4));

        // Edited by hand while the node is stopped (sqlite3 on the file): the record cut short.
        await daemon.StopAsync();
        await using (var db = new SqliteConnection($"Data Source={_dir.File("merlin.db")};Pooling=False"))
        {
            await db.OpenAsync(Ct);
            await using var cmd = db.CreateCommand();
            cmd.CommandText = "UPDATE tables SET data = substr(data, 1, length(data) / 2) WHERE service_id = 'web'";
            Assert.Equal(1, await cmd.ExecuteNonQueryAsync(Ct));
        }
        await daemon.StartAsync();

        await WaitForRecomputedAsync(daemon, FromNothing(1, 2, 3, 4), Servers(1, 2, 3, 4), "damaged (");

        // The API's next change of the service (a server added) replaces the record by the table that follows from nothing.
        await MustAsync(daemon, "server", "add", "web", Server(5), "-w", "1", "-f", "masq");
        await WaitForRepairedAsync(daemon, FromNothing(1, 2, 3, 4, 5), Servers(1, 2, 3, 4, 5));
    }

    [Fact]
    public async Task AnIpv6MdTableService_IsProgrammedFromItsStoredTable_SlotForSlot()
    {
        await using var daemon = await StartAsync("sqlite");
        await MustAsync(daemon, "service", "add", "web", "tcp", "[2001:db8::10]:80", "-s", "mh", "-b", "mh-port,md-table");
        string[] servers = ["[2001:db8::1]:80", "[2001:db8::2]:80", "[2001:db8::3]:80"];
        foreach (var s in servers) await MustAsync(daemon, "server", "add", "web", s, "-w", "1", "-f", "masq");
        // A removal gives the table a history, so the map matches the stored record, not a fresh build.
        await MustAsync(daemon, "server", "del", "web", servers[1]);
        // Until the daemon applies the removal the map still names the removed server: all three may own slots on
        // the way; the stored table the map must end as names only the two left.
        await WaitForStoredTableInKernelAsync(daemon, servers);
        Assert.DoesNotContain(servers[1], KernelMap(out _)!.Values);
    }

    /// <summary>An md-table service (port-aware hashing) with NAT servers .1 … .n: NAT needs no MACs, and the map then names each owner.</summary>
    private static async Task CreateAsync(RunningDaemon daemon, int n)
    {
        await MustAsync(daemon, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh", "-b", "mh-port,md-table");
        for (int i = 1; i <= n; i++) await MustAsync(daemon, "server", "add", "web", Server(i), "-w", "1", "-f", "masq");
    }

    private static async Task<byte[]> StoredAsync(RunningDaemon daemon)
    {
        var answer = await daemon.Extended.GetTableAsync(new StringValue { Value = "web" }, cancellationToken: Ct);
        // The service comes with its table (what an agent needs instead of a List), without Merlin's mark.
        Assert.Equal(("web", 80u), (answer.Service.Id, answer.Service.Key.Port));
        Assert.False(answer.Service.HasMerlinDigest);
        return answer.Table.ToByteArray();
    }

    private async Task WaitForStoredTableInKernelAsync(RunningDaemon daemon, string[] live)
    {
        MinimalDisruptionTable? stored = null;
        await UntilAsync(daemon, live, async map =>
        {
            stored = TableRecord.Decode(await StoredAsync(daemon)).Current;
            return Holds(map, stored) && !(await StatusAsync(daemon)).Contains("RECOMPUTED", StringComparison.Ordinal);
        }, "the kernel's map is the stored table");
        Assert.Equal(0, await RecomputedMetricAsync(daemon));
    }

    private async Task WaitForRecomputedAsync(RunningDaemon daemon, MinimalDisruptionTable expected, string[] live, string problem)
    {
        await UntilAsync(daemon, live, async map => Holds(map, expected) && (await StatusAsync(daemon)).Contains("RECOMPUTED", StringComparison.Ordinal),
            $"the kernel's map is the table computed from nothing ({expected.HashText}) and meradm status says RECOMPUTED");
        var status = await StatusAsync(daemon);
        Assert.Contains($"{expected.HashText} (RECOMPUTED: stored table {problem}", status);
        Assert.Equal(1, await RecomputedMetricAsync(daemon));
        // List tells the operator why the stored record was not used.
        var (_, json, _) = await daemon.MeradmAsync("list", "-o", "json");
        Assert.Contains(problem, json);
    }

    private async Task WaitForRepairedAsync(RunningDaemon daemon, MinimalDisruptionTable expected, string[] live)
    {
        await UntilAsync(daemon, live, async map => Holds(map, expected) && !(await StatusAsync(daemon)).Contains("RECOMPUTED", StringComparison.Ordinal),
            "the stored record is good again and the kernel's map is it");
        var stored = TableRecord.Decode(await StoredAsync(daemon)).Current;
        Assert.Equal(expected.Encode(), stored.Encode());
        Assert.Equal(0, await RecomputedMetricAsync(daemon));
        var (_, json, _) = await daemon.MeradmAsync("list", "-o", "json");
        Assert.Contains(expected.HashText, json);
        Assert.DoesNotContain("damaged", json);
    }

    /// <summary>
    /// Polls until <paramref name="condition"/> holds of the kernel's map, and checks every map it reads on the way
    /// is whole: slots 0 … M−1, each once, each owned by one of <paramref name="live"/> (never a half-programmed table).
    /// </summary>
    private async Task UntilAsync(RunningDaemon daemon, string[] live, Func<IReadOnlyDictionary<int, string>, Task<bool>> condition, string what)
    {
        var owners = live.ToHashSet(StringComparer.Ordinal);
        string last = "";
        await Poll.UntilAsync(async () =>
        {
            daemon.Loop.Trigger();
            var map = KernelMap(out last);
            if (map is null) return false;
            Assert.True(Enumerable.Range(0, map.Count).All(map.ContainsKey), $"the kernel's map is not whole:\n{last}");
            Assert.All(map.Values, o => Assert.Contains(o, owners));
            return await condition(map);
        }, what, Converge, () => $"the kernel's map:\n{Shorten(last)}\nmeradm status:\n{StatusAsync(daemon).GetAwaiter().GetResult()}\nthe daemon's log:\n{daemon.Logs.Text}",
            TimeSpan.FromMilliseconds(200), Ct);
    }

    private static bool Holds(IReadOnlyDictionary<int, string> map, MinimalDisruptionTable table) =>
        map.Count == table.Size && Enumerable.Range(0, table.Size).All(s => map[s] == table.OwnerId(s));

    /// <summary>The NAT map of the service's flows as the kernel holds it (slot → ip:port), or null while there is none.</summary>
    private IReadOnlyDictionary<int, string>? KernelMap(out string text)
    {
        text = "";
        try { text = _ns.Exec("nft", "list", "table", "inet", "merlin_nat"); }
        catch (InvalidOperationException) { return null; }
        var maps = MapBlock().Matches(text).Where(m => m.Groups[2].Value.Contains("numgen", StringComparison.Ordinal)).ToList();
        if (maps.Count == 0) return null;
        Assert.Single(maps);
        var body = maps[0].Groups[2].Value;
        var cut = body.IndexOf("elements", StringComparison.Ordinal);
        if (cut < 0) return null;
        var map = new Dictionary<int, string>();
        foreach (Match e in Element().Matches(body[cut..]))
            Assert.True(map.TryAdd(int.Parse(e.Groups[1].Value, CultureInfo.InvariantCulture), Merlin.Model.Endpoints.Format(System.Net.IPAddress.Parse(e.Groups[2].Value), ushort.Parse(e.Groups[3].Value, CultureInfo.InvariantCulture))), $"slot {e.Groups[1].Value} twice");
        return map;
    }

    private static string Shorten(string s) => s.Length <= 4000 ? s : s[..4000] + " …";

    private static async Task<string> StatusAsync(RunningDaemon daemon)
    {
        var (code, stdout, err) = await daemon.MeradmAsync("status");
        Assert.True(code == 0, $"meradm status: exit {code}: {err}");
        return stdout;
    }

    private static async Task<double> RecomputedMetricAsync(RunningDaemon daemon)
    {
        using var http = daemon.Health();
        var scrape = await http.GetStringAsync("/metrics", Ct);
        var line = RecomputedLine().Match(scrape);
        Assert.True(line.Success, "no merlin_tables_recomputed in /metrics");
        return double.Parse(line.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    private static async Task MustAsync(RunningDaemon daemon, params string[] args)
    {
        var (code, _, err) = await daemon.MeradmAsync(args);
        Assert.True(code == 0, $"meradm {string.Join(' ', args)}: exit {code}: {err}");
    }

    [GeneratedRegex(@"map (\w+) \{(.*?)\n\t\}", RegexOptions.Singleline)]
    private static partial Regex MapBlock();

    [GeneratedRegex(@"(\d+) : ([0-9a-fA-F.:]+) \. (\d+)")]
    private static partial Regex Element();

    [GeneratedRegex(@"^merlin_tables_recomputed(?:\{[^}]*\})? (\S+)", RegexOptions.Multiline)]
    private static partial Regex RecomputedLine();
}
