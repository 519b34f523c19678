using Merlin.Contracts;
using static Merlin.Store.Tests.Records;

namespace Merlin.Store.Tests;

/// <summary>
/// The promises every <see cref="IStore"/> keeps, run against each implementation by a subclass that
/// says how to open (and reopen) a fresh, empty store and how to drop its change history.
/// </summary>
public abstract class StoreContractTests : IAsyncLifetime
{
    private IStore? _store;

    protected IStore Store => _store ?? throw new InvalidOperationException("the store is not open");

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Opens the store of this test: empty the first time, the same data on later calls.</summary>
    protected abstract Task<IStore> OpenAsync();

    /// <summary>Drops the change history through <paramref name="revision"/> (etcd compaction).</summary>
    protected abstract Task CompactAsync(IStore store, long revision);

    /// <summary>Opens another fresh, empty store, beside this test's, that derives lookup tables with <paramref name="derive"/>.</summary>
    protected abstract Task<IStore> OpenWithTablesAsync(ServiceTableDeriver derive);

    public virtual async ValueTask InitializeAsync() => _store = await OpenAsync();

    public virtual async ValueTask DisposeAsync()
    {
        if (_store is not null) await _store.DisposeAsync();
        GC.SuppressFinalize(this);
    }

    protected async Task ReopenAsync()
    {
        await Store.DisposeAsync();
        _store = null;
        _store = await OpenAsync();
    }

    // ------------------------------------------------------------ services

    [Fact]
    public async Task CreateService_ThenGet_ReturnsTheRecordAndAVersion()
    {
        var web = Service("web", "10.0.0.1", 80);
        await Store.CreateServiceAsync(web, Ct);

        var got = await Store.GetServiceAsync("web", Ct);

        Assert.NotNull(got);
        Assert.Equal(web, got.Value.Message);
        Assert.True(got.Version > 0);
    }

    [Fact]
    public async Task GetService_Unknown_ReturnsNull()
    {
        Assert.Null(await Store.GetServiceAsync("nope", Ct));
    }

    [Fact]
    public async Task CreateService_DuplicateId_IsRefusedAndKeepsTheFirst()
    {
        await Store.CreateServiceAsync(Service("web", "10.0.0.1", 80), Ct);

        var e = await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServiceAsync(Service("web", "10.0.0.2", 443), Ct));

        Assert.Contains("web", e.Message);
        Assert.Equal("10.0.0.1", (await Store.GetServiceAsync("web", Ct))!.Value.Key.Ip);
    }

    [Fact]
    public async Task CreateService_DuplicateKey_IsRefusedNamingTheHolder()
    {
        await Store.CreateServiceAsync(Service("web", "10.0.0.1", 80, Protocol.Tcp), Ct);

        var e = await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServiceAsync(Service("web2", "10.0.0.1", 80, Protocol.Tcp), Ct));

        Assert.Contains("\"web\"", e.Message);
        Assert.Null(await Store.GetServiceAsync("web2", Ct));
    }

    [Fact]
    public async Task CreateService_SameAddressOtherProtocolOrPort_IsAccepted()
    {
        await Store.CreateServiceAsync(Service("tcp", "10.0.0.1", 80, Protocol.Tcp), Ct);
        await Store.CreateServiceAsync(Service("udp", "10.0.0.1", 80, Protocol.Udp), Ct);
        await Store.CreateServiceAsync(Service("sctp", "10.0.0.1", 80, Protocol.Sctp), Ct);
        await Store.CreateServiceAsync(Service("tcp81", "10.0.0.1", 81, Protocol.Tcp), Ct);

        Assert.Equal(4, (await Store.ListAsync(Ct)).Items.Count);
    }

    [Fact]
    public async Task CreateService_DuplicateIPv6KeyWrittenDifferently_IsRefused()
    {
        await Store.CreateServiceAsync(Service("v6", "2001:db8::1", 443), Ct);

        await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServiceAsync(Service("v6b", "2001:DB8:0:0::1", 443), Ct));
    }

    [Fact]
    public async Task CreateService_DuplicateFwmark_IsRefused()
    {
        await Store.CreateServiceAsync(FwmarkService("m1", 7), Ct);
        await Store.CreateServiceAsync(FwmarkService("m2", 8), Ct);

        await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServiceAsync(FwmarkService("m3", 7), Ct));
    }

    [Fact]
    public async Task CreateService_KeyOfADeletedService_IsAccepted()
    {
        await Store.CreateServiceAsync(Service("old", "10.0.0.9", 80), Ct);
        await Store.DeleteServiceAsync("old", Ct);

        await Store.CreateServiceAsync(Service("new", "10.0.0.9", 80), Ct);

        Assert.NotNull(await Store.GetServiceAsync("new", Ct));
    }

    [Fact]
    public async Task UpdateService_AtCurrentVersion_ReplacesTheRecordAndMovesTheVersion()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        var before = (await Store.GetServiceAsync("web", Ct))!;
        var changed = before.Value.Clone();
        changed.Config.Scheduler = "wlc";
        changed.Config.Flags.Add("sh-port");

        await Store.UpdateServiceAsync(changed, before.Version, Ct);

        var after = (await Store.GetServiceAsync("web", Ct))!;
        Assert.Equal(changed, after.Value.Message);
        Assert.True(after.Version > before.Version);
    }

    [Fact]
    public async Task UpdateService_StaleVersion_ConflictsAndLeavesTheRecord()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        var v1 = (await Store.GetServiceAsync("web", Ct))!;
        var first = v1.Value.Clone();
        first.Config.Scheduler = "wrr";
        await Store.UpdateServiceAsync(first, v1.Version, Ct);

        var second = v1.Value.Clone();
        second.Config.Scheduler = "lc";
        await Assert.ThrowsAsync<ConflictException>(() => Store.UpdateServiceAsync(second, v1.Version, Ct));

        Assert.Equal("wrr", (await Store.GetServiceAsync("web", Ct))!.Value.Config.Scheduler);
    }

    [Fact]
    public async Task UpdateService_Unknown_IsNotFound()
    {
        await Assert.ThrowsAsync<NotFoundException>(() => Store.UpdateServiceAsync(Service("ghost"), 1, Ct));
        Assert.Null(await Store.GetServiceAsync("ghost", Ct));
    }

    [Fact]
    public async Task UpdateService_ToTheKeyOfAnotherService_IsRefused()
    {
        await Store.CreateServiceAsync(Service("a", "10.0.0.1", 80), Ct);
        await Store.CreateServiceAsync(Service("b", "10.0.0.2", 80), Ct);
        var b = (await Store.GetServiceAsync("b", Ct))!;

        await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.UpdateServiceAsync(Service("b", "10.0.0.1", 80), b.Version, Ct));

        Assert.Equal("10.0.0.2", (await Store.GetServiceAsync("b", Ct))!.Value.Key.Ip);
    }

    [Fact]
    public async Task DeleteService_Unknown_IsNotFound()
    {
        await Assert.ThrowsAsync<NotFoundException>(() => Store.DeleteServiceAsync("ghost", Ct));
    }

    [Fact]
    public async Task DeleteService_RemovesItsServersInTheSameTransaction()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.2"), Ct);
        var before = await Store.ListAsync(Ct);

        await Store.DeleteServiceAsync("web", Ct);

        Assert.Null(await Store.GetServiceAsync("web", Ct));
        Assert.Null(await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct));
        Assert.Empty((await Store.ListAsync(Ct)).Items);
        // One revision for the whole delete: the service and both servers went together.
        var changes = await CollectAsync(Store.WatchAsync(before.Revision, Ct), 3);
        Assert.Single(changes.Select(c => c.Revision).Distinct());
        Assert.All(changes, c => Assert.Equal(StoreChangeKind.Delete, c.Kind));
        // A service created again under the same id starts without servers.
        await Store.CreateServiceAsync(Service("web"), Ct);
        Assert.Empty(Assert.Single((await Store.ListAsync(Ct)).Items).Servers);
    }

    [Fact]
    public async Task DeleteService_svc1_LeavesTheServersOf_svc10()
    {
        await Store.CreateServiceAsync(Service("svc1", "10.0.0.1", 80), Ct);
        await Store.CreateServiceAsync(Service("svc10", "10.0.0.10", 80), Ct);
        await Store.CreateServerAsync(Server("svc1", "10.1.0.1"), Ct);
        await Store.CreateServerAsync(Server("svc10", "10.1.0.10"), Ct);

        await Store.DeleteServiceAsync("svc1", Ct);

        var item = Assert.Single((await Store.ListAsync(Ct)).Items);
        Assert.Equal("svc10", item.Service.Id);
        Assert.Equal("10.1.0.10", Assert.Single(item.Servers).Key.Ip);
    }

    // ------------------------------------------------------------ servers

    [Fact]
    public async Task CreateServer_ThenGet_RoundTripsEveryField()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        var server = FullServer("web", "10.1.0.1", 8443);

        await Store.CreateServerAsync(server, Ct);

        var got = await Store.GetServerAsync("web", "10.1.0.1", 8443, Ct);
        Assert.NotNull(got);
        Assert.Equal(server, got.Value.Message);
        Assert.Equal(0u, got.Value.Config.Weight);
        Assert.True(got.Version > 0);
        Assert.Null(await Store.GetServerAsync("web", "10.1.0.1", 8444, Ct));
    }

    [Fact]
    public async Task CreateServer_ForAMissingService_IsNotFound()
    {
        var e = await Assert.ThrowsAsync<NotFoundException>(() => Store.CreateServerAsync(Server("ghost", "10.1.0.1"), Ct));

        Assert.Contains("ghost", e.Message);
        Assert.Empty((await Store.ListAsync(Ct)).Items);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // with tables: on etcd a server write to a table-free service checks the family from its view of the services
    public async Task CreateServer_OfTheOtherFamily_IsRefusedNamingKeyIp_AFirewallMarkServiceTakesEither(bool withTables)
    {
        await using var opened = withTables ? await OpenWithTablesAsync(DeriveForTest) : null;
        var store = opened ?? Store;
        await store.CreateServiceAsync(Service("v4", "198.18.0.1"), Ct);
        await store.CreateServiceAsync(Service("v6", "2001:db8::1", 443), Ct);
        await store.CreateServiceAsync(Service("v6mh", "2001:db8::2", 443, scheduler: "mh"), Ct);
        await store.CreateServiceAsync(FwmarkService("mark", 7), Ct);

        var e = await Assert.ThrowsAsync<Merlin.Model.ValidationException>(() => store.CreateServerAsync(Server("v4", "2001:db8::10"), Ct));
        Assert.Equal("key.ip", e.Error.Field);
        Assert.Equal("2001:db8::10 is IPv6 but the service is IPv4", e.Error.Reason);
        await Assert.ThrowsAsync<Merlin.Model.ValidationException>(() => store.CreateServerAsync(Server("v6", "198.18.1.1"), Ct));
        await Assert.ThrowsAsync<Merlin.Model.ValidationException>(() => store.CreateServerAsync(Server("v6mh", "198.18.1.1"), Ct));
        await store.CreateServerAsync(Server("v4", "198.18.1.1"), Ct);
        await store.CreateServerAsync(Server("v6", "2001:db8::10"), Ct);
        await store.CreateServerAsync(Server("v6mh", "2001:db8::10"), Ct);
        await store.CreateServerAsync(Server("mark", "198.18.1.1"), Ct);
        await store.CreateServerAsync(Server("mark", "2001:db8::10"), Ct);

        var servers = (await store.ListAsync(Ct)).Items.ToDictionary(i => i.Service.Id, i => i.Servers.Select(r => r.Key.Ip).Order().ToList());
        Assert.Equal(["198.18.1.1"], servers["v4"]);
        Assert.Equal(["2001:db8::10"], servers["v6"]);
        Assert.Equal(["2001:db8::10"], servers["v6mh"]);
        Assert.Equal(["198.18.1.1", "2001:db8::10"], servers["mark"]);

        // The service replaced by one of the other family under the same id: the server is checked against the new one,
        // whatever a view of the services still holds.
        await store.DeleteServiceAsync("v4", Ct);
        await store.CreateServiceAsync(Service("v4", "2001:db8::4"), Ct);
        await store.CreateServerAsync(Server("v4", "2001:db8::40"), Ct);
        await Assert.ThrowsAsync<Merlin.Model.ValidationException>(() => store.CreateServerAsync(Server("v4", "198.18.1.4"), Ct));
        Assert.Equal("2001:db8::40", Assert.Single((await store.GetItemAsync("v4", Ct))!.Servers).Key.Ip);
    }

    [Fact]
    public async Task CreateServer_Duplicate_IsRefusedAndKeepsTheFirst()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1", 8080, weight: 5), Ct);

        await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServerAsync(Server("web", "10.1.0.1", 8080, weight: 9), Ct));

        Assert.Equal(5u, (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!.Value.Config.Weight);
    }

    [Fact]
    public async Task CreateServer_SameAddressInAnotherServiceOrPort_IsAccepted()
    {
        await Store.CreateServiceAsync(Service("a", "10.0.0.1", 80), Ct);
        await Store.CreateServiceAsync(Service("b", "10.0.0.2", 80), Ct);
        await Store.CreateServerAsync(Server("a", "10.1.0.1", 8080), Ct);
        await Store.CreateServerAsync(Server("a", "10.1.0.1", 8081), Ct);
        await Store.CreateServerAsync(Server("b", "10.1.0.1", 8080), Ct);

        var list = await Store.ListAsync(Ct);
        Assert.Equal([2, 1], list.Items.Select(i => i.Servers.Count));
    }

    [Fact]
    public async Task UpdateServer_AtCurrentVersion_ReplacesTheRecord_WeightZeroAndClearedHealthIncluded()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(FullServer("web", "10.1.0.1", 80), Ct);
        var before = (await Store.GetServerAsync("web", "10.1.0.1", 80, Ct))!;
        var changed = before.Value.Clone();
        changed.Config.Weight = 0;
        changed.HealthCheck.Endpoint = "";

        await Store.UpdateServerAsync(changed, before.Version, Ct);

        var after = (await Store.GetServerAsync("web", "10.1.0.1", 80, Ct))!;
        Assert.Equal(changed, after.Value.Message);
        Assert.Equal("", after.Value.HealthCheck.Endpoint);
        Assert.True(after.Version > before.Version);
    }

    [Fact]
    public async Task UpdateServer_StaleVersion_ConflictsAndLeavesTheRecord()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1", weight: 1), Ct);
        var v1 = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;
        var first = v1.Value.Clone();
        first.Config.Weight = 2;
        await Store.UpdateServerAsync(first, v1.Version, Ct);

        var second = v1.Value.Clone();
        second.Config.Weight = 3;
        await Assert.ThrowsAsync<ConflictException>(() => Store.UpdateServerAsync(second, v1.Version, Ct));

        Assert.Equal(2u, (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!.Value.Config.Weight);
    }

    [Fact]
    public async Task UpdateServer_Unknown_IsNotFoundAndCreatesNothing()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);

        await Assert.ThrowsAsync<NotFoundException>(() => Store.UpdateServerAsync(Server("web", "10.1.0.1"), 1, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => Store.UpdateServerAsync(Server("web", "10.1.0.1"), 0, Ct));

        Assert.Null(await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct));
    }

    [Fact]
    public async Task DeleteServer_RemovesOnlyThatServer_AndUnknownIsNotFound()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.2"), Ct);

        await Store.DeleteServerAsync("web", "10.1.0.1", 8080, Ct);

        Assert.Equal("10.1.0.2", Assert.Single(Assert.Single((await Store.ListAsync(Ct)).Items).Servers).Key.Ip);
        await Assert.ThrowsAsync<NotFoundException>(() => Store.DeleteServerAsync("web", "10.1.0.1", 8080, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => Store.DeleteServerAsync("ghost", "10.1.0.2", 8080, Ct));
    }

    [Fact]
    public async Task DeleteServerAtVersion_Current_RemovesIt_AndAStaleVersionConflictsAndKeepsIt()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        var read = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;
        var drained = read.Value.Clone();
        drained.DrainDeadline = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.UnixEpoch.AddDays(20_000));
        await Store.UpdateServerAsync(drained, read.Version, Ct);

        // The record changed after it was read (here: a drain with a new deadline): the delete is refused.
        var conflict = await Assert.ThrowsAsync<ConflictException>(() => Store.DeleteServerAsync("web", "10.1.0.1", 8080, read.Version, Ct));
        Assert.Contains("10.1.0.1:8080", conflict.Message);
        var current = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;
        Assert.Equal(drained, current.Value.Message);

        await Store.DeleteServerAsync("web", "10.1.0.1", 8080, current.Version, Ct);

        Assert.Null(await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => Store.DeleteServerAsync("web", "10.1.0.1", 8080, current.Version, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => Store.DeleteServerAsync("ghost", "10.1.0.1", 8080, current.Version, Ct));
    }

    [Fact]
    public async Task DeleteServerAtVersion_Concurrent_FromTheSameVersion_ExactlyOneDeletes()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.2"), Ct);
        var start = await Store.GetRevisionAsync(Ct);
        var read = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;

        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Outcome(() => Store.DeleteServerAsync("web", "10.1.0.1", 8080, read.Version, Ct))));

        Assert.Equal(1, results.Count(r => r is null));
        Assert.All(results.Where(r => r is not null), r => Assert.IsType<NotFoundException>(r));
        Assert.Equal("10.1.0.2", Assert.Single(Assert.Single((await Store.ListAsync(Ct)).Items).Servers).Key.Ip);
        // One delete in the history, and nothing else.
        await Store.CreateServerAsync(Server("web", "10.1.0.3"), Ct);
        var changes = await CollectAsync(Store.WatchAsync(start, Ct), until: c => c.Key == "servers/web/10.1.0.3:8080");
        Assert.Equal([(StoreChangeKind.Delete, "servers/web/10.1.0.1:8080"), (StoreChangeKind.Put, "servers/web/10.1.0.3:8080")], changes.Select(c => (c.Kind, c.Key)));
    }

    [Fact]
    public async Task Servers_WithIPv6Keys_AreStoredFoundListedAndDeleted()
    {
        await Store.CreateServiceAsync(Service("v6", "2001:db8::1", 443), Ct);
        await Store.CreateServerAsync(Server("v6", "2001:db8::10", 8443), Ct);
        await Store.CreateServerAsync(Server("v6", "2001:db8::11", 8443), Ct);

        Assert.NotNull(await Store.GetServerAsync("v6", "2001:db8::10", 8443, Ct));
        await Assert.ThrowsAsync<AlreadyExistsException>(() => Store.CreateServerAsync(Server("v6", "2001:db8::10", 8443), Ct));
        Assert.Equal(2, Assert.Single((await Store.ListAsync(Ct)).Items).Servers.Count);

        await Store.DeleteServerAsync("v6", "2001:db8::10", 8443, Ct);
        Assert.Equal("2001:db8::11", Assert.Single(Assert.Single((await Store.ListAsync(Ct)).Items).Servers).Key.Ip);
    }

    // ------------------------------------------------------------ list

    [Fact]
    public async Task List_GroupsServersUnderTheirService_AndSvc1NeverSeesSvc10()
    {
        await Store.CreateServiceAsync(Service("svc1", "10.0.0.1", 80), Ct);
        await Store.CreateServiceAsync(Service("svc10", "10.0.0.10", 80), Ct);
        await Store.CreateServiceAsync(Service("svc2", "10.0.0.2", 80), Ct);
        await Store.CreateServerAsync(Server("svc10", "10.1.0.10"), Ct);
        await Store.CreateServerAsync(Server("svc1", "10.1.0.1"), Ct);
        await Store.CreateServerAsync(Server("svc10", "10.1.0.11"), Ct);

        var list = await Store.ListAsync(Ct);

        Assert.Equal(["svc1", "svc10", "svc2"], list.Items.Select(i => i.Service.Id));
        Assert.Equal(["10.1.0.1"], list.Items[0].Servers.Select(s => s.Key.Ip));
        Assert.Equal(["10.1.0.10", "10.1.0.11"], list.Items[1].Servers.Select(s => s.Key.Ip));
        Assert.Empty(list.Items[2].Servers);
        Assert.All(list.Items.SelectMany(i => i.Servers.Select(s => (i.Service.Id, s.ServiceID))), p => Assert.Equal(p.Item1, p.Item2));
    }

    [Fact]
    public async Task GetItem_IsTheListsItemForThatService_TableIncluded_AndUnknownIsNull()
    {
        await using var store = await OpenWithTablesAsync(DeriveForTest);
        await store.CreateServiceAsync(Service("svc1", "198.18.0.1", 80, scheduler: "mh"), Ct);
        await store.CreateServiceAsync(Service("svc10", "198.18.0.10", 80, scheduler: "mh"), Ct);
        await store.CreateServerAsync(Server("svc10", "198.18.1.10"), Ct);
        await store.CreateServerAsync(Server("svc1", "198.18.1.2"), Ct);
        await store.CreateServerAsync(Server("svc1", "198.18.1.1"), Ct);

        var list = await store.ListAsync(Ct);
        foreach (var id in new[] { "svc1", "svc10" })
        {
            var listed = list.Items.Single(i => i.Service.Id == id);
            var item = await store.GetItemAsync(id, Ct);
            Assert.NotNull(item);
            Assert.Equal(listed.Service.Id, item.Service.Id);
            Assert.Equal(listed.Servers.Select(x => (x.ServiceID, x.Key.Ip, x.Key.Port)), item.Servers.Select(x => (x.ServiceID, x.Key.Ip, x.Key.Port)));
            Assert.NotNull(item.Table);
            Assert.Equal(listed.Table, item.Table);
        }
        Assert.Equal(["198.18.1.1", "198.18.1.2"], (await store.GetItemAsync("svc1", Ct))!.Servers.Select(x => x.Key.Ip));
        Assert.Null(await store.GetItemAsync("svc", Ct));
    }

    [Fact]
    public async Task List_Empty_HasNoItems()
    {
        var list = await Store.ListAsync(Ct);

        Assert.Empty(list.Items);
        Assert.True(list.Revision >= 0);
    }

    [Fact]
    public async Task List_RevisionCoversEveryVersionInIt_AndMovesWithEachWrite()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        var first = await Store.ListAsync(Ct);
        var server = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;
        Assert.True(server.Version <= first.Revision);

        await Store.UpdateServerAsync(server.Value, server.Version, Ct);

        var second = await Store.ListAsync(Ct);
        Assert.True(second.Revision > first.Revision);
        Assert.Equal(second.Revision, (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!.Version);
    }

    [Fact]
    public async Task GetRevision_EqualsTheSnapshotsUntilAWrite_ThenMoves()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        var snapshot = await Store.ListAsync(Ct);
        Assert.Equal(snapshot.Revision, await Store.GetRevisionAsync(Ct));
        Assert.Equal(snapshot.Revision, await Store.GetRevisionAsync(Ct));

        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        var afterCreate = await Store.GetRevisionAsync(Ct);
        Assert.True(afterCreate > snapshot.Revision);

        await Store.DeleteServerAsync("web", "10.1.0.1", 8080, Ct);
        Assert.True(await Store.GetRevisionAsync(Ct) > afterCreate);
        Assert.Equal((await Store.ListAsync(Ct)).Revision, await Store.GetRevisionAsync(Ct));
    }

    [Fact]
    public async Task List_WhileWritesRun_IsASnapshotThatTheWatchCarriesForward()
    {
        // The reconciler's promise: list at R, then apply the watch from R, and you hold what a later list shows.
        var writer = Task.Run(async () =>
        {
            for (var round = 0; round < 6; round++)
            {
                var id = $"r{round}";
                await Store.CreateServiceAsync(Service(id, $"10.0.{round}.1", 80), Ct);
                for (var i = 0; i < 5; i++) await Store.CreateServerAsync(Server(id, $"10.1.{round}.{i}"), Ct);
                if (round > 0) await Store.DeleteServiceAsync($"r{round - 1}", Ct);
            }
        }, Ct);
        var snapshots = new List<StoreSnapshot>();
        while (!writer.IsCompleted) snapshots.Add(await Store.ListAsync(Ct));
        await writer;
        // A last write marks the end: the watch is read up to it (a delete's changes share one revision).
        await Store.CreateServiceAsync(Service("marker", "10.0.99.1", 80), Ct);
        var final = await Store.ListAsync(Ct);
        snapshots.Add(final);

        foreach (var snapshot in snapshots.Where((_, i) => i % Math.Max(1, snapshots.Count / 5) == 0))
        {
            var keys = Keys(snapshot);
            if (snapshot.Revision < final.Revision)
            {
                var changes = await CollectAsync(Store.WatchAsync(snapshot.Revision, Ct), until: c => c.Key == "services/marker");
                foreach (var c in changes)
                {
                    Assert.True(c.Revision > snapshot.Revision);
                    if (c.Kind == StoreChangeKind.Put) keys.Add(c.Key); else keys.Remove(c.Key);
                }
            }
            Assert.Equal(Keys(final).Order(StringComparer.Ordinal), keys.Order(StringComparer.Ordinal));
        }
    }

    // ------------------------------------------------------------ paged list

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(100)]
    public async Task ListPages_AreTheListsItemsInItsOrder_InPagesOfAtMostTheSize_AtItsRevision(int pageSize)
    {
        // "a" is a prefix of "a-1" and "a.b", so their servers' keys sort apart from the services'; "many" has more
        // servers than etcd's test page size (4), so a read of servers ends inside a service.
        string[] ids = ["b", "a-1", "a", "many", "a.b", "c"];
        for (var i = 0; i < ids.Length; i++) await Store.CreateServiceAsync(Service(ids[i], $"198.18.0.{i + 1}", 80), Ct);
        for (var i = 0; i < 9; i++) await Store.CreateServerAsync(Server("many", $"198.18.2.{i + 1}"), Ct);
        foreach (var id in new[] { "a", "a-1", "a.b", "c" })
            for (var i = 0; i < 2; i++) await Store.CreateServerAsync(Server(id, $"198.18.{3 + Array.IndexOf(ids, id)}.{i + 1}"), Ct);
        var list = await Store.ListAsync(Ct);

        var pages = await ToListAsync(Store.ListPagesAsync(pageSize, Ct));

        Assert.All(pages, p => Assert.InRange(p.Items.Count, 1, pageSize));
        Assert.Equal(Math.Ceiling(ids.Length / (double)pageSize), pages.Count);
        Assert.All(pages, p => Assert.Equal(list.Revision, p.Revision));
        Assert.Equal(Shape(list.Items), Shape(pages.SelectMany(p => p.Items)));
        Assert.Equal(9, pages.SelectMany(p => p.Items).Single(i => i.Service.Id == "many").Servers.Count);
    }

    [Fact]
    public async Task ListPages_CarryTheTables_AsListDoes()
    {
        await using var store = await OpenWithTablesAsync(DeriveForTest);
        foreach (var (id, i) in new[] { "svc1", "svc10", "svc2" }.Select((id, i) => (id, i)))
        {
            await store.CreateServiceAsync(Service(id, $"198.18.0.{i + 1}", 80, scheduler: i == 2 ? "rr" : "mh"), Ct);
            await store.CreateServerAsync(Server(id, $"198.18.1.{i + 1}"), Ct);
        }
        var list = await store.ListAsync(Ct);

        var items = (await ToListAsync(store.ListPagesAsync(2, Ct))).SelectMany(p => p.Items).ToList();

        Assert.Equal(list.Items.Select(i => i.Table), items.Select(i => i.Table));
        Assert.Equal(2, items.Count(i => i.Table is not null));
    }

    [Fact]
    public async Task ListPages_WritesAfterTheFirstPage_AreNotSeen()
    {
        foreach (var (id, i) in new[] { "p1", "p2", "p3", "p4", "p5" }.Select((id, i) => (id, i)))
        {
            await Store.CreateServiceAsync(Service(id, $"198.18.0.{i + 1}", 80), Ct);
            await Store.CreateServerAsync(Server(id, $"198.18.1.{i + 1}"), Ct);
        }
        var before = await Store.ListAsync(Ct);

        var pages = new List<StorePage>();
        await using (var reader = Store.ListPagesAsync(2, Ct).GetAsyncEnumerator(Ct))
        {
            Assert.True(await reader.MoveNextAsync());
            pages.Add(reader.Current);
            // Into pages not read yet: a new service, a new server, a changed server, a deleted service.
            await Store.CreateServiceAsync(Service("p6", "198.18.0.6", 80), Ct);
            await Store.CreateServerAsync(Server("p4", "198.18.1.40"), Ct);
            var p3 = (await Store.GetServerAsync("p3", "198.18.1.3", 8080, Ct))!;
            var heavier = p3.Value.Clone();
            heavier.Config.Weight = 9;
            await Store.UpdateServerAsync(heavier, p3.Version, Ct);
            await Store.DeleteServiceAsync("p5", Ct);
            while (await reader.MoveNextAsync()) pages.Add(reader.Current);
        }

        Assert.Equal(Shape(before.Items), Shape(pages.SelectMany(p => p.Items)));
        Assert.All(pages, p => Assert.Equal(before.Revision, p.Revision));
        Assert.Equal(1u, pages.SelectMany(p => p.Items).Single(i => i.Service.Id == "p3").Servers.Single().Config.Weight);
        Assert.Equal(["p1", "p2", "p3", "p4", "p6"], (await Store.ListAsync(Ct)).Items.Select(i => i.Service.Id));
    }

    [Fact]
    public async Task ListPages_OfAnEmptyStore_IsOneEmptyPage()
    {
        var page = Assert.Single(await ToListAsync(Store.ListPagesAsync(10, Ct)));

        Assert.Empty(page.Items);
        Assert.True(page.Revision >= 0);
    }

    [Fact]
    public async Task ListPages_ASizeBelowOne_IsRefused()
    {
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await ToListAsync(Store.ListPagesAsync(0, Ct)));
    }

    /// <summary>What a list shows of its items: each service with its servers' endpoints, in order.</summary>
    private static List<string> Shape(IEnumerable<StoreItem> items) =>
        [.. items.Select(i => $"{i.Service.Id}: {string.Join(", ", i.Servers.Select(s => $"{s.ServiceID}/{s.Key.Ip}:{s.Key.Port}"))}")];

    protected static async Task<List<T>> ToListAsync<T>(IAsyncEnumerable<T> items)
    {
        var list = new List<T>();
        await foreach (var item in items) list.Add(item);
        return list;
    }

    // ------------------------------------------------------------ concurrency

    [Fact]
    public async Task ConcurrentCreates_OfTheSameId_ExactlyOneWins()
    {
        var results = await Task.WhenAll(Enumerable.Range(0, 12).Select(i =>
            Outcome(() => Store.CreateServiceAsync(Service("web", $"10.0.0.{i + 1}", 80), Ct))));

        Assert.Equal(1, results.Count(r => r is null));
        Assert.All(results.Where(r => r is not null), r => Assert.IsType<AlreadyExistsException>(r));
    }

    [Fact]
    public async Task ConcurrentCreates_OfTheSameKeyUnderDifferentIds_ExactlyOneWins()
    {
        var results = await Task.WhenAll(Enumerable.Range(0, 12).Select(i =>
            Outcome(() => Store.CreateServiceAsync(Service($"web{i}", "10.0.0.1", 80), Ct))));

        Assert.Equal(1, results.Count(r => r is null));
        Assert.All(results.Where(r => r is not null), r => Assert.IsType<AlreadyExistsException>(r));
        Assert.Single((await Store.ListAsync(Ct)).Items);
    }

    [Fact]
    public async Task ConcurrentCreates_OfDistinctServicesAndServers_AllSucceed()
    {
        await Task.WhenAll(Enumerable.Range(0, 12).Select(async i =>
        {
            await Store.CreateServiceAsync(Service($"svc{i}", $"10.0.0.{i + 1}", 80), Ct);
            await Store.CreateServerAsync(Server($"svc{i}", "10.1.0.1"), Ct);
        }));

        var list = await Store.ListAsync(Ct);
        Assert.Equal(12, list.Items.Count);
        Assert.All(list.Items, i => Assert.Single(i.Servers));
    }

    [Fact]
    public async Task ConcurrentUpdates_FromTheSameVersion_ExactlyOneWins()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1"), Ct);
        var read = (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!;

        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(i =>
        {
            var s = read.Value.Clone();
            s.Config.Weight = (uint)(100 + i);
            return Outcome(() => Store.UpdateServerAsync(s, read.Version, Ct));
        }));

        Assert.Equal(1, results.Count(r => r is null));
        Assert.All(results.Where(r => r is not null), r => Assert.IsType<ConflictException>(r));
        var winner = Array.IndexOf(results, null);
        Assert.Equal((uint)(100 + winner), (await Store.GetServerAsync("web", "10.1.0.1", 8080, Ct))!.Value.Config.Weight);
    }

    // ------------------------------------------------------------ watch

    [Fact]
    public async Task Watch_AfterARevision_YieldsEachPutAndDeleteInOrder()
    {
        var start = (await Store.ListAsync(Ct)).Revision;
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(Server("web", "10.1.0.1", 80), Ct);
        var server = (await Store.GetServerAsync("web", "10.1.0.1", 80, Ct))!;
        await Store.UpdateServerAsync(server.Value, server.Version, Ct);
        await Store.DeleteServerAsync("web", "10.1.0.1", 80, Ct);
        await Store.DeleteServiceAsync("web", Ct);

        var changes = await CollectAsync(Store.WatchAsync(start, Ct), 5);

        Assert.Equal(
            [
                (StoreChangeKind.Put, "services/web"),
                (StoreChangeKind.Put, "servers/web/10.1.0.1:80"),
                (StoreChangeKind.Put, "servers/web/10.1.0.1:80"),
                (StoreChangeKind.Delete, "servers/web/10.1.0.1:80"),
                (StoreChangeKind.Delete, "services/web"),
            ],
            changes.Select(c => (c.Kind, c.Key)));
        Assert.Equal(changes.Select(c => c.Revision).Order(), changes.Select(c => c.Revision));
        Assert.Equal(5, changes.Select(c => c.Revision).Distinct().Count());
        Assert.True(changes[0].Revision > start);
        Assert.Equal(server.Version, changes[1].Revision);
    }

    [Fact]
    public async Task Watch_PutsCarryTheRecordTheyWrote_DeletesNone()
    {
        var start = (await Store.ListAsync(Ct)).Revision;
        var web = Service("web", "198.18.0.1", 80);
        await Store.CreateServiceAsync(web, Ct);
        var server = FullServer("web", "198.18.1.1", 80);
        await Store.CreateServerAsync(server, Ct);
        var heavier = server.Clone();
        heavier.Config.Weight = 7;
        await Store.UpdateServerAsync(heavier, (await Store.GetServerAsync("web", "198.18.1.1", 80, Ct))!.Version, Ct);
        await Store.DeleteServiceAsync("web", Ct);

        var changes = await CollectAsync(Store.WatchAsync(start, Ct), 5);

        // A follower keeps the decoded state from these alone: each Put as Get would have returned it then.
        Assert.Equal<Google.Protobuf.IMessage?>([web, server, heavier, null, null], changes.Select(c => (Google.Protobuf.IMessage?)c.Service?.Message ?? c.Server?.Message));
        Assert.Equal(["servers/web/198.18.1.1:80", "services/web"], changes.Skip(3).Select(c => c.Key).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Watch_AppliedToAList_EqualsALaterList()
    {
        await Store.CreateServiceAsync(Service("a", "198.18.0.1"), Ct);
        await Store.CreateServerAsync(Server("a", "198.18.1.1"), Ct);
        var listed = await Store.ListAsync(Ct);
        var records = new Dictionary<string, Google.Protobuf.IMessage>(StringComparer.Ordinal);
        foreach (var item in listed.Items)
        {
            records[$"services/{item.Service.Id}"] = item.Service.Message;
            foreach (var server in item.Servers) records[$"servers/{item.Service.Id}/{server.Key.Ip}:{server.Key.Port}"] = server.Message;
        }

        await Store.CreateServiceAsync(Service("b", "198.18.0.2"), Ct);
        await Store.CreateServerAsync(Server("b", "198.18.1.2"), Ct);
        await Store.CreateServerAsync(Server("a", "198.18.1.3"), Ct);
        var edited = Server("a", "198.18.1.1", weight: 9);
        await Store.UpdateServerAsync(edited, (await Store.GetServerAsync("a", "198.18.1.1", 8080, Ct))!.Version, Ct);
        await Store.DeleteServiceAsync("a", Ct);
        await Store.CreateServiceAsync(Service("marker", "198.18.0.9"), Ct);
        foreach (var change in await CollectAsync(Store.WatchAsync(listed.Revision, Ct), c => c.Key == "services/marker"))
        {
            if (change.Kind == StoreChangeKind.Put) records[change.Key] = (Google.Protobuf.IMessage?)change.Service?.Message ?? change.Server!.Message;
            else records.Remove(change.Key);
        }

        var later = await Store.ListAsync(Ct);
        var expected = later.Items.SelectMany(i => i.Servers.Select(s => ($"servers/{i.Service.Id}/{s.Key.Ip}:{s.Key.Port}", (Google.Protobuf.IMessage)s.Message))
            .Prepend(($"services/{i.Service.Id}", (Google.Protobuf.IMessage)i.Service.Message)));
        Assert.Equal(expected.OrderBy(kv => kv.Item1, StringComparer.Ordinal), records.Select(kv => (kv.Key, kv.Value)).OrderBy(kv => kv.Key, StringComparer.Ordinal));
    }

    [Fact]
    public async Task Watch_ResumedFromARevision_YieldsOnlyLaterChanges()
    {
        await Store.CreateServiceAsync(Service("a", "10.0.0.1"), Ct);
        var seen = (await Store.ListAsync(Ct)).Revision;
        await Store.CreateServiceAsync(Service("b", "10.0.0.2"), Ct);
        await Store.CreateServiceAsync(Service("c", "10.0.0.3"), Ct);

        var changes = await CollectAsync(Store.WatchAsync(seen, Ct), 2);

        Assert.Equal(["services/b", "services/c"], changes.Select(c => c.Key));
        var resumed = await CollectAsync(Store.WatchAsync(changes[0].Revision, Ct), 1);
        Assert.Equal("services/c", Assert.Single(resumed).Key);
    }

    [Fact]
    public async Task Watch_WakesPromptlyOnANewWrite()
    {
        var start = (await Store.ListAsync(Ct)).Revision;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        await using var changes = Store.WatchAsync(start, timeout.Token).GetAsyncEnumerator(timeout.Token);
        var next = changes.MoveNextAsync().AsTask();
        await Task.Delay(200, Ct);
        Assert.False(next.IsCompleted);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Store.CreateServiceAsync(Service("web"), Ct);

        Assert.True(await next);
        Assert.Equal((StoreChangeKind.Put, "services/web"), (changes.Current.Kind, changes.Current.Key));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the watch took {clock.Elapsed} to report the write");
    }

    [Fact]
    public async Task Watch_FromBeforeCompactedHistory_YieldsOneResyncAndEnds()
    {
        for (var i = 0; i < 5; i++) await Store.CreateServiceAsync(Service($"s{i}", $"10.0.0.{i + 1}"), Ct);
        var revision = (await Store.ListAsync(Ct)).Revision;
        await CompactAsync(Store, revision);

        var changes = await CollectAsync(Store.WatchAsync(0, Ct), int.MaxValue);

        var resync = Assert.Single(changes);
        Assert.Equal(StoreChangeKind.Resync, resync.Kind);
        // After a re-list the watch resumes from the snapshot's revision, or from the Resync's.
        var relisted = await Store.ListAsync(Ct);
        await Store.CreateServiceAsync(Service("after", "10.0.0.99"), Ct);
        Assert.Equal("services/after", Assert.Single(await CollectAsync(Store.WatchAsync(relisted.Revision, Ct), 1)).Key);
        Assert.Equal("services/after", (await CollectAsync(Store.WatchAsync(resync.Revision, Ct), c => c.Key == "services/after"))[^1].Key);
    }

    [Fact]
    public async Task Watch_CanceledByTheCaller_Ends()
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var start = (await Store.ListAsync(Ct)).Revision;
        var watching = CollectAsync(Store.WatchAsync(start, cts.Token), 1);
        await Task.Delay(100, Ct);

        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => watching);
    }

    // ------------------------------------------------------------ durability

    [Fact]
    public async Task Reopen_KeepsEveryRecordVersionAndRevision()
    {
        await Store.CreateServiceAsync(Service("web"), Ct);
        await Store.CreateServerAsync(FullServer("web", "10.1.0.1", 80), Ct);
        var before = await Store.ListAsync(Ct);
        var version = (await Store.GetServerAsync("web", "10.1.0.1", 80, Ct))!.Version;

        await ReopenAsync();

        var after = await Store.ListAsync(Ct);
        Assert.Equal(before.Revision, after.Revision);
        Assert.Equal(before.Items.Select(i => i.Service), after.Items.Select(i => i.Service));
        Assert.Equal(before.Items.SelectMany(i => i.Servers), after.Items.SelectMany(i => i.Servers));
        Assert.Equal(version, (await Store.GetServerAsync("web", "10.1.0.1", 80, Ct))!.Version);
    }

    // ------------------------------------------------------------ settings

    [Fact]
    public async Task Settings_AreEmptyUntilSet_SurviveAReopen_AndAreNoRecord()
    {
        Assert.Equal(new Settings(), (await Store.GetSettingsAsync(Ct)).Message);
        await Store.CreateServiceAsync(Service("web"), Ct);

        await Store.SetSettingsAsync(new Settings { Compatibility = "go-merlin" }, Ct);
        await ReopenAsync();

        Assert.Equal("go-merlin", (await Store.GetSettingsAsync(Ct)).Compatibility);
        Assert.Equal(["web"], (await Store.ListAsync(Ct)).Items.Select(i => i.Service.Id)); // not listed as a record
        await Store.SetSettingsAsync(new Settings { Compatibility = "" }, Ct);
        Assert.Equal("", (await Store.GetSettingsAsync(Ct)).Compatibility);
    }

    // ------------------------------------------------------------ helpers

    protected static async Task<Exception?> Outcome(Func<Task> action)
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

    // ------------------------------------------------------------ lookup tables

    /// <summary>
    /// A stand-in for the API's table: what it was computed from, as text, so a test reads the inputs back.
    /// Only services with scheduler mh keep one.
    /// </summary>
    private static byte[]? DeriveForTest(StoredService service, IReadOnlyList<StoredServer> servers, byte[]? previous) =>
        service.Config.Scheduler != "mh" ? null : System.Text.Encoding.UTF8.GetBytes(
            $"after {previous?.Length ?? 0}: " + string.Join(",", servers.Select(s => $"{s.Key.Ip}:{s.Key.Port}={s.Config.Weight}")));

    private static string? TableText(StoreSnapshot snapshot, string id) =>
        snapshot.Items.Single(i => i.Service.Id == id).Table is { } t ? System.Text.Encoding.UTF8.GetString(t) : null;

    [Fact]
    public async Task Tables_FollowEveryServerWrite_InTheSameRevision_FromThePreviousTable()
    {
        await using var store = await OpenWithTablesAsync(DeriveForTest);
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80, scheduler: "mh"), Ct);
        var start = (await store.ListAsync(Ct)).Revision;
        await store.CreateServerAsync(Server("web", "198.18.1.2", 80, weight: 1), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.1", 80, weight: 2), Ct);
        var first = await store.ListAsync(Ct);
        var had = TableText(first, "web")!;
        Assert.Equal($"after {"after 0: 198.18.1.2:80=1".Length}: 198.18.1.1:80=2,198.18.1.2:80=1", had);

        var server = await store.GetServerAsync("web", "198.18.1.1", 80, Ct);
        var drained = server!.Value.Clone();
        drained.Config.Weight = 0;
        await store.UpdateServerAsync(drained, server.Version, Ct);
        Assert.Equal($"after {had.Length}: 198.18.1.1:80=0,198.18.1.2:80=1", TableText(await store.ListAsync(Ct), "web"));

        var now = await store.GetServerAsync("web", "198.18.1.1", 80, Ct);
        await store.DeleteServerAsync("web", "198.18.1.1", 80, now!.Version, Ct);
        await store.DeleteServerAsync("web", "198.18.1.2", 80, Ct);
        var last = await store.ListAsync(Ct);
        Assert.EndsWith(": ", TableText(last, "web"));

        // Each write's table change carries the write's own revision: one transaction.
        var changes = await CollectAsync(store.WatchAsync(start, Ct), until: c => c.Revision == last.Revision && c.Key == "tables/web");
        foreach (var revision in changes.Select(c => c.Revision).Distinct())
        {
            var keys = changes.Where(c => c.Revision == revision).Select(c => c.Key).ToList();
            Assert.Contains("tables/web", keys);
            Assert.Contains(keys, k => k.StartsWith("servers/web/", StringComparison.Ordinal));
        }
        Assert.Equal(5, changes.Select(c => c.Revision).Distinct().Count());   // two creates, an update, two deletes

        await store.DeleteServiceAsync("web", Ct);
        Assert.Empty((await store.ListAsync(Ct)).Items);
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80, scheduler: "mh"), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.3", 80), Ct);
        Assert.Equal("after 0: 198.18.1.3:80=1", TableText(await store.ListAsync(Ct), "web"));
    }

    [Fact]
    public async Task Tables_GoAwayWhenTheServiceNoLongerKeepsOne_AndStoresWithoutADeriverKeepNone()
    {
        await using var store = await OpenWithTablesAsync(DeriveForTest);
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80, scheduler: "mh"), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.1", 80), Ct);
        Assert.NotNull(TableText(await store.ListAsync(Ct), "web"));
        var service = await store.GetServiceAsync("web", Ct);
        var sh = service!.Value.Clone();
        sh.Config.Scheduler = "sh";
        await store.UpdateServiceAsync(sh, service.Version, Ct);
        Assert.Null(TableText(await store.ListAsync(Ct), "web"));

        await Store.CreateServiceAsync(Service("plain", "198.18.0.2", 80, scheduler: "mh"), Ct);
        await Store.CreateServerAsync(Server("plain", "198.18.1.1", 80), Ct);
        Assert.Null(TableText(await Store.ListAsync(Ct), "plain"));
    }

    [Fact]
    public async Task Tables_FailedWritesLeaveTheTableAsItWas()
    {
        await using var store = await OpenWithTablesAsync(DeriveForTest);
        await store.CreateServiceAsync(Service("web", "198.18.0.1", 80, scheduler: "mh"), Ct);
        await store.CreateServerAsync(Server("web", "198.18.1.1", 80), Ct);
        var before = await store.ListAsync(Ct);
        await Assert.ThrowsAsync<AlreadyExistsException>(() => store.CreateServerAsync(Server("web", "198.18.1.1", 80, weight: 5), Ct));
        await Assert.ThrowsAsync<ConflictException>(() => store.UpdateServerAsync(Server("web", "198.18.1.1", 80, weight: 5), 1, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => store.DeleteServerAsync("web", "198.18.1.9", 80, Ct));
        await Assert.ThrowsAsync<NotFoundException>(() => store.CreateServerAsync(Server("nope", "198.18.1.1", 80), Ct));
        Assert.Equal(TableText(before, "web"), TableText(await store.ListAsync(Ct), "web"));
    }

    protected static Task<List<StoreChange>> CollectAsync(IAsyncEnumerable<StoreChange> changes, int count) =>
        CollectAsync(changes, count, until: null);

    protected static Task<List<StoreChange>> CollectAsync(IAsyncEnumerable<StoreChange> changes, Func<StoreChange, bool> until) =>
        CollectAsync(changes, int.MaxValue, until);

    /// <summary>Reads a watch until <paramref name="count"/> changes, <paramref name="until"/> holds, or it ends; 10 s at most.</summary>
    private static async Task<List<StoreChange>> CollectAsync(IAsyncEnumerable<StoreChange> changes, int count, Func<StoreChange, bool>? until)
    {
        var list = new List<StoreChange>();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        try
        {
            await foreach (var c in changes.WithCancellation(timeout.Token))
            {
                list.Add(c);
                if (list.Count >= count || (until?.Invoke(c) ?? false)) break;
            }
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !Ct.IsCancellationRequested && count == int.MaxValue && until is null)
        {
            // Collecting "everything": the watch stayed open, which is fine.
        }
        return list;
    }

    private static HashSet<string> Keys(StoreSnapshot snapshot)
    {
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var item in snapshot.Items)
        {
            keys.Add($"services/{item.Service.Id}");
            foreach (var s in item.Servers) keys.Add($"servers/{item.Service.Id}/{s.Key.Ip}:{s.Key.Port}");
        }
        return keys;
    }
}
