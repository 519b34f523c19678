using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Google.Protobuf;
using Merlin.Store.Etcd;
using Merlin.Contracts;
using static Merlin.Store.Tests.Records;

namespace Merlin.Store.Tests;

/// <summary>What only etcd has to prove: the original merlin's layout and bytes, prefixes, several endpoints.</summary>
public sealed class EtcdStoreTests(EtcdFixture etcd) : IClassFixture<EtcdFixture>, IAsyncLifetime
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private RawEtcd Raw => _raw ?? throw new InvalidOperationException("not initialized");
    private RawEtcd? _raw;

    public async ValueTask InitializeAsync()
    {
        _raw = new RawEtcd(etcd.Server.Endpoint);
        await Raw.DeletePrefixAsync("/merlin");
    }

    public ValueTask DisposeAsync()
    {
        _raw?.Dispose();
        return ValueTask.CompletedTask;
    }

    private EtcdStore Open(string prefix = "/merlin") => new([etcd.Server.Endpoint], prefix, TimeSpan.FromSeconds(5));

    [Fact]
    public async Task RecordsWrittenAsRawProtobufUnderTheOriginalLayout_AreListedAndFound()
    {
        var web = Service("web", "198.18.0.1", 80);
        var v4 = Server("web", "198.18.1.1", 8080, weight: 3);
        var v6 = FullServer("web", "2001:db8::10", 8080);
        await Raw.PutAsync("/merlin/services/web", web.ToByteArray());
        var v4Revision = await Raw.PutAsync("/merlin/servers/web/198.18.1.1:8080", v4.ToByteArray());
        await Raw.PutAsync("/merlin/servers/web/2001:db8::10:8080", v6.ToByteArray());
        await using var store = Open();

        var list = await store.ListAsync(Ct);

        var item = Assert.Single(list.Items);
        Assert.Equal(web, item.Service.Message);
        Assert.Equal([v4, v6], item.Servers.Select(s => s.Message));
        var got = await store.GetServerAsync("web", "198.18.1.1", 8080, Ct);
        Assert.Equal(v4Revision, got!.Version);
        Assert.Equal(v6, (await store.GetServerAsync("web", "2001:db8::10", 8080, Ct))!.Value.Message);
        // And the store can change what the original wrote.
        var changed = v4.Clone();
        changed.Config.Weight = 0;
        await store.UpdateServerAsync(changed, got.Version, Ct);
        Assert.Equal(changed, RealServer.Parser.ParseFrom(await Raw.GetAsync("/merlin/servers/web/198.18.1.1:8080")));
    }

    [Fact]
    public async Task RecordsTheStoreWrites_ParseAsRawProtobufFromAPlainGet()
    {
        await using var store = Open();
        var web = Service("web", "2001:db8::1", 443);
        var server = FullServer("web", "2001:db8::10", 8443);

        await store.CreateServiceAsync(web, Ct);
        await store.CreateServerAsync(server, Ct);

        Assert.Equal(["/merlin/servers/web/2001:db8::10:8443", "/merlin/services/web"], [.. (await Raw.KeysAsync("/merlin/")).Where(k => !k.StartsWith("/merlin/service-keys/"))]);
        Assert.Equal(web, VirtualService.Parser.ParseFrom(await Raw.GetAsync("/merlin/services/web")));
        Assert.Equal(server, RealServer.Parser.ParseFrom(await Raw.GetAsync("/merlin/servers/web/2001:db8::10:8443")));
    }

    [Fact]
    public async Task TheBytesInEtcd_AreTheGoMerlinsEncoding_AndAFieldUnknownHereSurvivesARewrite()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Protobuf.StoredRecords.DecodeService(Convert.FromHexString(StoredRecordsTests.GoService)), Ct);
        await Raw.PutAsync("/merlin/servers/web/198.18.1.1:8080", Convert.FromHexString(StoredRecordsTests.GoServerWithUnknownField));

        // Read and written back as the API's drain does with a record it did not make: nothing of it is lost.
        var read = (await store.GetServerAsync("web", "198.18.1.1", 8080, Ct))!;
        await store.UpdateServerAsync(read.Value, read.Version, Ct);

        Assert.Equal(StoredRecordsTests.GoService, Convert.ToHexStringLower((await Raw.GetAsync("/merlin/services/web"))!));
        Assert.Equal(StoredRecordsTests.GoServerWithUnknownField, Convert.ToHexStringLower((await Raw.GetAsync("/merlin/servers/web/198.18.1.1:8080"))!));
        Assert.True((await store.GetServerAsync("web", "198.18.1.1", 8080, Ct))!.Version > read.Version);
    }

    [Fact]
    public async Task Watch_SeesWritesOfAnotherClient()
    {
        await using var store = Open();
        var start = (await store.ListAsync(Ct)).Revision;
        var revision = await Raw.PutAsync("/merlin/services/other", Service("other").ToByteArray());
        await Raw.DeletePrefixAsync("/merlin/services/other");

        var changes = new List<StoreChange>();
        await foreach (var c in store.WatchAsync(start, Ct))
        {
            changes.Add(c);
            if (changes.Count == 2) break;
        }

        Assert.Equal([new StoreChange(StoreChangeKind.Put, "services/other", revision), new StoreChange(StoreChangeKind.Delete, "services/other", revision + 1)], changes);
    }

    [Fact]
    public async Task Prefixes_AreIsolated_EvenWhenOneIsAPrefixOfTheOther()
    {
        await using var merlin = Open("/merlin");
        await using var merlin2 = Open("merlin2/");
        await merlin2.CreateServiceAsync(Service("web"), Ct);
        await merlin2.CreateServerAsync(Server("web", "198.18.1.1"), Ct);

        Assert.Empty((await merlin.ListAsync(Ct)).Items);
        await merlin.CreateServiceAsync(Service("web"), Ct); // same id and key: another prefix is another store
        Assert.Empty(Assert.Single((await merlin.ListAsync(Ct)).Items).Servers);
        Assert.Equal("/merlin2", merlin2.Prefix);
        await Raw.DeletePrefixAsync("/merlin2/");
    }

    [Fact]
    public async Task ARecordThatIsNotProtobuf_MakesListFailInsteadOfDroppingIt()
    {
        await Raw.PutAsync("/merlin/services/bad", [0xff, 0xff, 0xff]);
        await using var store = Open();

        var e = await Assert.ThrowsAsync<StoreUnavailableException>(() => store.ListAsync(Ct));

        Assert.Contains("/merlin/services/bad", e.Message);
    }

    [Fact]
    public async Task SeveralEndpoints_OneDown_StillServe()
    {
        // As the --store-endpoints flag gives them: one comma-separated list, a bare host:port meaning http.
        await using var store = new EtcdStore([$"127.0.0.1:{UnusedPort()}, {etcd.Server.Endpoint}"], "/merlin", TimeSpan.FromSeconds(5));
        Assert.StartsWith("http://127.0.0.1:", store.Endpoints);
        Assert.Contains($", {etcd.Server.Endpoint}", store.Endpoints);

        for (var i = 0; i < 4; i++) await store.CreateServiceAsync(Service($"s{i}", $"10.0.0.{i + 1}"), Ct);

        Assert.Equal(4, (await store.ListAsync(Ct)).Items.Count);
    }

    [Fact]
    public async Task ServersLeftByAGoMerlinsServiceDelete_AreNotListed_ButCounted_AndAServiceCreatedWithThatIdStartsWithoutThem()
    {
        // The Go merlin's `service del old` deletes services/old only; its servers stay under servers/old/.
        var orphan = Server("old", "198.18.1.9", 80);
        await Raw.PutAsync("/merlin/servers/old/198.18.1.9:80", orphan.ToByteArray());
        await Raw.PutAsync("/merlin/servers/old2/198.18.1.8:80", Server("old2", "198.18.1.8", 80).ToByteArray());
        await using var store = Open();
        var before = await store.ListAsync(Ct);
        Assert.Empty(before.Items);
        Assert.Equal(2, before.OrphanedServers);

        await store.CreateServiceAsync(Service("old", "198.18.0.2", 443), Ct);

        var after = await store.ListAsync(Ct);
        Assert.Empty(Assert.Single(after.Items).Servers);
        Assert.Equal(1, after.OrphanedServers); // old2's is still an orphan
        Assert.Equal(["/merlin/servers/old2/198.18.1.8:80", "/merlin/services/old"], [.. (await Raw.KeysAsync("/merlin/s")).Where(k => !k.StartsWith("/merlin/service-keys/"))]); // old2's are not old's
    }

    [Fact]
    public async Task SettingsKey_IsOutsideTheRangesTheGoMerlinLists()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("web"), Ct);
        await store.SetSettingsAsync(new Settings { Compatibility = "go-merlin" }, Ct);

        // The Go merlin lists services/ as services, and servers/<id> (no closing slash) as a service's servers.
        Assert.Equal(["/merlin/services/web"], await Raw.KeysAsync("/merlin/services/"));
        Assert.Empty(await Raw.KeysAsync("/merlin/servers/"));
        Assert.Equal(new Settings { Compatibility = "go-merlin" }, Settings.Parser.ParseFrom(await Raw.GetAsync("/merlin/settings")));
    }

    [Fact]
    public async Task TheKeyIndex_IsWrittenWithTheService_OutsideWhatTheGoMerlinReads_AndGoesWithIt()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct);
        var web = (await store.GetServiceAsync("web", Ct))!;
        await store.UpdateServiceAsync(web.Value, web.Version, Ct);

        Assert.Equal(["/merlin/services/web"], await Raw.KeysAsync("/merlin/services/"));
        var entry = Assert.Single(await Raw.KeysAsync("/merlin/service-keys/"));
        Assert.Equal("web"u8.ToArray(), await Raw.GetAsync(entry));

        await store.DeleteServiceAsync("web", Ct);
        Assert.Empty(await Raw.KeysAsync("/merlin/"));
    }

    [Fact]
    public async Task AServiceAGoMerlinCreated_HasNoIndexEntry_YetItsKeyIsRefused_AndTheEntryRepaired()
    {
        await Raw.PutAsync("/merlin/services/go", Service("go", "198.18.0.1", 80).ToByteArray());
        await using var store = Open();
        await store.CreateServiceAsync(Service("other", "198.18.0.2", 80), Ct); // the store has read the services once

        await Raw.PutAsync("/merlin/services/go2", Service("go2", "198.18.0.3", 80).ToByteArray()); // after that read
        var e = await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServiceAsync(Service("web", "198.18.0.3", 80), Ct));
        Assert.Contains("\"go2\"", e.Message);
        await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct));

        // Repaired: a second client's create is refused by the entry alone.
        Assert.Equal(3, (await Raw.KeysAsync("/merlin/service-keys/")).Count);
        await using var second = Open();
        await Assert.ThrowsAsync<AlreadyExistsException>(() => second.CreateServiceAsync(Service("web", "198.18.0.3", 80), Ct));
        Assert.Equal(["/merlin/services/go", "/merlin/services/go2", "/merlin/services/other"], await Raw.KeysAsync("/merlin/services/"));
    }

    [Fact]
    public async Task AStaleIndexEntry_FromAGoMerlinsDeleteOrKeyChange_DoesNotBlockACreate()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("a", "198.18.0.1", 80), Ct);
        await store.CreateServiceAsync(Service("b", "198.18.0.2", 80), Ct);
        await Raw.Client.DeleteAsync("/merlin/services/a", cancellationToken: Ct); // a Go merlin's service del: the entry stays
        await Raw.PutAsync("/merlin/services/b", Service("b", "198.18.0.9", 80).ToByteArray()); // a Go edit of b's key

        await store.CreateServiceAsync(Service("c", "198.18.0.1", 80), Ct);
        await using var second = Open();
        await second.CreateServiceAsync(Service("d", "198.18.0.2", 80), Ct);

        var names = new List<string>();
        foreach (var key in await Raw.KeysAsync("/merlin/service-keys/")) names.Add(System.Text.Encoding.UTF8.GetString((await Raw.GetAsync(key))!));
        Assert.Equal(["c", "d"], names.Order());
        await Assert.ThrowsAsync<AlreadyExistsException>(() => second.CreateServiceAsync(Service("e", "198.18.0.1", 80), Ct));
    }

    [Fact]
    public async Task SeveralClients_RacingForOneServiceKey_ExactlyOneWins()
    {
        // Separate store instances share no lock or cache: only etcd's transaction decides.
        var stores = Enumerable.Range(0, 4).Select(_ => Open()).ToArray();
        try
        {
            var results = await Task.WhenAll(stores.SelectMany((s, n) => Enumerable.Range(0, 3).Select(i =>
                Outcome(() => s.CreateServiceAsync(Service($"web-{n}-{i}", "198.18.0.1", 80), Ct)))));

            Assert.Equal(1, results.Count(r => r is null));
            Assert.All(results.Where(r => r is not null), r => Assert.IsType<AlreadyExistsException>(r));
            Assert.Single((await stores[0].ListAsync(Ct)).Items);
        }
        finally
        {
            foreach (var s in stores) await s.DisposeAsync();
        }
    }

    [Fact]
    public async Task SeveralClients_CreatingDistinctServicesAtOnce_AllSucceed()
    {
        var stores = Enumerable.Range(0, 4).Select(_ => Open()).ToArray();
        try
        {
            await Task.WhenAll(stores.Select((s, n) => Task.Run(async () =>
            {
                for (var i = 0; i < 8; i++) await s.CreateServiceAsync(Service($"svc-{n}-{i}", $"10.0.{n}.{i + 1}", 80), Ct);
            }, Ct)));

            Assert.Equal(32, (await stores[0].ListAsync(Ct)).Items.Count);
        }
        finally
        {
            foreach (var s in stores) await s.DisposeAsync();
        }
    }

    [Fact]
    public async Task TheKeyCheck_FollowsWhatOtherClientsCreateAndDelete()
    {
        await using var a = Open();
        await using var b = Open();
        await a.CreateServiceAsync(Service("x", "198.18.0.1", 80), Ct); // a now knows x holds the key

        await b.DeleteServiceAsync("x", Ct);
        await a.CreateServiceAsync(Service("y", "198.18.0.1", 80), Ct); // freed by b: accepted
        await b.CreateServiceAsync(Service("z", "198.18.0.2", 80), Ct);

        var e = await Assert.ThrowsAsync<AlreadyExistsException>(() => a.CreateServiceAsync(Service("w", "198.18.0.2", 80), Ct));
        Assert.Contains("\"z\"", e.Message);
        var y = (await b.GetServiceAsync("y", Ct))!;
        await Assert.ThrowsAsync<AlreadyExistsException>(() => b.UpdateServiceAsync(Service("y", "198.18.0.2", 80), y.Version, Ct));
    }

    [Fact]
    public async Task AGoMerlinsServiceWrittenBetweenTheCreatesCheckAndItsCommit_IsNotDuplicated()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("other", "198.18.0.2", 80), Ct); // the store follows the services now
        // The Go merlin writes the same key after the create checked its view and before its transaction.
        store.BeforeCreateTransaction = () => Raw.PutAsync("/merlin/services/go", Service("go", "198.18.0.1", 80).ToByteArray());

        var e = await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct));
        Assert.Contains("\"go\"", e.Message);
        Assert.Equal(["/merlin/services/go", "/merlin/services/other"], await Raw.KeysAsync("/merlin/services/"));
        foreach (var entry in await Raw.KeysAsync("/merlin/service-keys/")) Assert.NotEqual("web"u8.ToArray(), await Raw.GetAsync(entry));

        store.BeforeCreateTransaction = null;
        await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct));
    }

    [Fact]
    public async Task AGoMerlinsServiceWrittenConcurrentlyWithACreateOfItsKey_IsNeverDuplicatedByTheCreate()
    {
        // A raw put checks nothing, so one that lands after the create's commit may still duplicate it (the Go
        // merlin's own race); what the create must never do is succeed after the raw service was written.
        await using var store = Open();
        await store.CreateServiceAsync(Service("warm", "198.18.1.1", 80), Ct);
        var refused = 0;
        for (var round = 0; round < 30; round++)
        {
            var ip = $"198.18.0.{round + 1}";
            var goWrite = Task.Run(async () =>
            {
                await Task.Delay(Random.Shared.Next(0, 3), Ct);
                return await Raw.PutAsync($"/merlin/services/go-{round}", Service($"go-{round}", ip, 80).ToByteArray());
            }, Ct);
            if (round % 5 == 0) await goWrite; // now and then one plainly first: the check must refuse it
            else if (round % 2 == 0) await Task.Delay(1, Ct);
            var created = await Outcome(() => store.CreateServiceAsync(Service($"web-{round}", ip, 80), Ct));
            var goRevision = await goWrite;
            if (created is null)
            {
                var web = await store.GetServiceAsync($"web-{round}", Ct);
                Assert.NotNull(web);
                Assert.True(goRevision > web.Version, $"round {round}: the create succeeded at revision {web.Version} after the Go merlin's service at {goRevision}");
            }
            else
            {
                Assert.IsType<AlreadyExistsException>(created);
                Assert.Null(await store.GetServiceAsync($"web-{round}", Ct));
                refused++;
            }
        }
        Assert.True(refused >= 6, $"only {refused} creates refused, yet 6 rounds wrote the Go merlin's service first");
    }

    // A stand-in for the API's deriver: "mh" services keep a table of their servers, others none.
    private EtcdStore OpenWithTables() => new(new EtcdStoreOptions
    {
        Endpoints = [etcd.Server.Endpoint], Timeout = TimeSpan.FromSeconds(5),
        DeriveTable = (service, servers, _) => service.Config.Scheduler != "mh" ? null
            : System.Text.Encoding.UTF8.GetBytes(string.Join(",", servers.Select(x => $"{x.Key.Ip}:{x.Key.Port}"))),
        KeepsTable = service => service.Config.Scheduler == "mh",
    });

    /// <summary>Waits until the store's view of the services has reached the service's current version.</summary>
    private static async Task ViewHasAsync(EtcdStore store, string id)
    {
        var version = (await store.GetServiceAsync(id, Ct))!.Version;
        await Merlin.Testing.Poll.UntilAsync(() => store.ViewRevision >= version, $"the view to reach service {id} at {version}", ct: Ct);
    }

    /// <summary>etcd's own count of the reads (Range) and transactions (Txn) it has answered.</summary>
    private async Task<(long Range, long Txn)> EtcdCallsAsync()
    {
        using var http = new HttpClient();
        var text = await http.GetStringAsync($"{etcd.Server.Endpoint}/metrics", Ct);
        long Count(string method) => text.Split('\n')
            .Where(l => l.StartsWith("grpc_server_handled_total{", StringComparison.Ordinal) && l.Contains($"grpc_method=\"{method}\"", StringComparison.Ordinal))
            .Sum(l => (long)double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        return (Count("Range"), Count("Txn"));
    }

    [Fact]
    public async Task ServerWritesToAServiceThatKeepsNoTable_AreOneTransactionEach_AndKeepTheirErrors()
    {
        await using var store = OpenWithTables();
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct);
        await ViewHasAsync(store, "web");

        var before = await EtcdCallsAsync();
        await store.CreateServerAsync(Server("web", "198.18.1.1"), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.2"), Ct);
        var after = await EtcdCallsAsync();

        Assert.Equal((0L, 2L), (after.Range - before.Range, after.Txn - before.Txn));
        Assert.Empty(await Raw.KeysAsync("/merlin/tables/"));
        await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServerAsync(Server("web", "198.18.1.1", weight: 5), Ct));
        Assert.Equal(1u, (await store.GetServerAsync("web", "198.18.1.1", 8080, Ct))!.Value.Config.Weight);
        await Assert.ThrowsAsync<NotFoundException>(() => store.CreateServerAsync(Server("gone", "198.18.1.1"), Ct));
        var server = await store.GetServerAsync("web", "198.18.1.2", 8080, Ct);
        var changed = server!.Value.Clone();
        changed.Config.Weight = 7;
        await store.UpdateServerAsync(changed, server.Version, Ct);
        await Assert.ThrowsAsync<ConflictException>(() => store.UpdateServerAsync(changed, server.Version, Ct));
        await store.DeleteServerAsync("web", "198.18.1.2", 8080, Ct);
        await Assert.ThrowsAsync<NotFoundException>(() => store.DeleteServerAsync("web", "198.18.1.2", 8080, Ct));
        Assert.Equal(["/merlin/servers/web/198.18.1.1:8080"], await Raw.KeysAsync("/merlin/servers/"));
    }

    [Fact]
    public async Task AServiceAGoMerlinMovedToATableScheduler_GetsItsTableFromTheNextServerWrite_HoweverFarTheViewLags()
    {
        await using var store = OpenWithTables();
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct);
        await ViewHasAsync(store, "web");
        await store.CreateServerAsync(Server("web", "198.18.1.1"), Ct);
        // Behind the store's back: the service now keeps a table; the view may or may not have seen it yet.
        await Raw.PutAsync("/merlin/services/web", Service("web", "198.18.0.1", 80, scheduler: "mh").ToByteArray());

        await store.CreateServerAsync(Server("web", "198.18.1.2"), Ct);

        Assert.Equal("198.18.1.1:8080,198.18.1.2:8080", System.Text.Encoding.UTF8.GetString((await Raw.GetAsync("/merlin/tables/web"))!));
    }

    [Fact]
    public async Task AStaleTableOfAServiceThatKeepsNone_IsRemovedByTheNextServerWrite()
    {
        await using var store = OpenWithTables();
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80), Ct);
        await ViewHasAsync(store, "web");
        await Raw.PutAsync("/merlin/tables/web", "stale"u8.ToArray()); // e.g. a Go merlin re-scheduled an md-table service

        await store.CreateServerAsync(Server("web", "198.18.1.1"), Ct);

        Assert.Empty(await Raw.KeysAsync("/merlin/tables/"));
        Assert.Equal(["/merlin/servers/web/198.18.1.1:8080"], await Raw.KeysAsync("/merlin/servers/"));
    }

    private static async Task<Exception?> Outcome(Func<Task> action)
    {
        try
        {
            await action();
            return null;
        }
        catch (StoreException e)
        {
            return e;
        }
    }

    internal static int UnusedPort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    [Fact]
    public async Task ListPages_WhoseRevisionIsCompactedMidRead_EndWithAClearError_AfterTheFirstPages()
    {
        await using var store = Open();
        for (var i = 0; i < 3; i++) await store.CreateServiceAsync(Service($"svc{i}", $"198.18.0.{i + 1}", 80), Ct);

        await using var reader = store.ListPagesAsync(1, Ct).GetAsyncEnumerator(Ct);
        Assert.True(await reader.MoveNextAsync());
        var revision = reader.Current.Revision;
        Assert.Equal("svc0", Assert.Single(reader.Current.Items).Service.Id);
        await store.CreateServiceAsync(Service("later", "198.18.0.9", 80), Ct);
        await store.CompactAsync(await store.GetRevisionAsync(Ct), Ct);

        var e = await Assert.ThrowsAsync<SnapshotCompactedException>(async () => await reader.MoveNextAsync());
        Assert.Contains($"compacted revision {revision}", e.Message);
        Assert.Contains("1 services read", e.Message);
        Assert.Contains("list again", e.Message);
        // Read again: a new revision, everything there.
        var again = new List<StorePage>();
        await foreach (var page in store.ListPagesAsync(1, Ct)) again.Add(page);
        Assert.Equal(["later", "svc0", "svc1", "svc2"], again.SelectMany(p => p.Items).Select(i => i.Service.Id));
    }
}

/// <summary>An etcd that goes away, never answers, or was never there: always StoreUnavailable, within the timeout.</summary>
public sealed class EtcdStoreOutageTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(1);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task EtcdStopped_EveryCallIsUnavailableWithinTheTimeout_AndTheStoreWorksAgainAfterRestart()
    {
        Testing.Requires.Etcd();
        using var server = Testing.EtcdServer.Launch();
        await using var store = new EtcdStore([server.Endpoint], "/merlin", Timeout);
        await store.CreateServiceAsync(Service("web"), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.1"), Ct);
        var version = (await store.GetServiceAsync("web", Ct))!.Version;
        var watch = Drain(store.WatchAsync((await store.ListAsync(Ct)).Revision, Ct));

        server.Stop();

        var watchError = await Assert.ThrowsAsync<StoreUnavailableException>(() => watch.WaitAsync(TimeSpan.FromSeconds(10), Ct));
        Assert.Contains(server.Endpoint.Replace("http://", ""), watchError.Message);
        await Unavailable(() => store.ListAsync(Ct), server.Endpoint);
        await Unavailable(() => store.GetServiceAsync("web", Ct), server.Endpoint);
        await Unavailable(() => store.CreateServiceAsync(Service("api", "198.18.0.2"), Ct), server.Endpoint);
        await Unavailable(() => store.UpdateServiceAsync(Service("web"), version, Ct), server.Endpoint);
        await Unavailable(() => store.CreateServerAsync(Server("web", "198.18.1.2"), Ct), server.Endpoint);
        await Unavailable(() => store.DeleteServiceAsync("web", Ct), server.Endpoint);
        await Unavailable(() => Drain(store.WatchAsync(0, Ct)), server.Endpoint);

        server.Start();

        var list = await Eventually(() => store.ListAsync(Ct));
        Assert.Equal("web", Assert.Single(list.Items).Service.Id);
        await store.CreateServiceAsync(Service("api", "198.18.0.2"), Ct);
        Assert.Equal(2, (await store.ListAsync(Ct)).Items.Count);
    }

    [Fact]
    public async Task NothingListening_IsUnavailableNamingTheEndpoint()
    {
        var endpoint = $"http://127.0.0.1:{EtcdStoreTests.UnusedPort()}";
        await using var store = new EtcdStore([endpoint], "/merlin", Timeout);

        await Unavailable(() => store.ListAsync(Ct), endpoint);
        await Unavailable(() => store.CreateServiceAsync(Service("web"), Ct), endpoint);
        await Unavailable(() => Drain(store.WatchAsync(0, Ct)), endpoint);
    }

    [Fact]
    public async Task APeerThatNeverAnswers_TimesOutAsUnavailable()
    {
        // Accepts TCP connections and then says nothing, like a hung etcd.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var accepted = new List<TcpClient>();
        using var acceptLoop = new CancellationTokenSource();
        var accepting = Task.Run(async () =>
        {
            try
            {
                while (true) accepted.Add(await listener.AcceptTcpClientAsync(acceptLoop.Token));
            }
            catch (OperationCanceledException)
            {
            }
        }, Ct);
        var endpoint = $"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";
        await using var store = new EtcdStore([endpoint], "/merlin", Timeout);

        var e = await Unavailable(() => store.GetServiceAsync("web", Ct), endpoint);
        Assert.Contains("did not answer", e.Message);
        await Unavailable(() => store.DeleteServerAsync("web", "198.18.1.1", 80, Ct), endpoint);
        await Unavailable(() => Drain(store.WatchAsync(0, Ct)), endpoint);

        await acceptLoop.CancelAsync();
        await accepting;
        foreach (var c in accepted) c.Dispose();
    }

    private static async Task<StoreUnavailableException> Unavailable(Func<Task> call, string endpoint)
    {
        var clock = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<StoreUnavailableException>(call);
        Assert.True(clock.Elapsed < Timeout + TimeSpan.FromSeconds(3), $"took {clock.Elapsed} (timeout {Timeout})");
        Assert.Contains(endpoint.Replace("http://", ""), e.Message);
        return e;
    }

    private static async Task Drain(IAsyncEnumerable<StoreChange> changes)
    {
        await foreach (var _ in changes)
        {
        }
    }

    private static async Task<T> Eventually<T>(Func<Task<T>> call)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await call();
            }
            catch (StoreUnavailableException) when (clock.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(100, Ct);
            }
        }
    }
}
