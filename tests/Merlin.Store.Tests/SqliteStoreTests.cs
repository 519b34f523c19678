using System.Diagnostics;
using Merlin.Store.Sqlite;
using Merlin.Testing;
using Microsoft.Data.Sqlite;
using static Merlin.Store.Tests.Records;

namespace Merlin.Store.Tests;

/// <summary>What only the embedded store has to prove: the file itself, history retention, a second writer.</summary>
public sealed class SqliteStoreTests : IDisposable
{
    private readonly TempDir _dir = new("sqlite");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string DbPath => _dir.File("merlin.db");

    private SqliteStore Open(long history = 10_000) =>
        new(DbPath, new SqliteStoreOptions { HistoryRevisions = history, WatchPollInterval = TimeSpan.FromMilliseconds(200) });

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task TheFile_IsInWalModeWithTheSchema()
    {
        await using (var store = Open())
            await store.CreateServiceAsync(Service("web"), Ct);

        using var c = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "PRAGMA journal_mode";
        Assert.Equal("wal", cmd.ExecuteScalar());
        cmd.CommandText = "SELECT COUNT(*) FROM services";
        Assert.Equal(1L, cmd.ExecuteScalar());
    }

    [Fact]
    public async Task TheBytesInTheFile_AreTheRecordsEncoding_ByteForByte()
    {
        await using (var store = Open())
        {
            await store.CreateServiceAsync(Protobuf.StoredRecords.DecodeService(Convert.FromHexString(StoredRecordsTests.GoService)), Ct);
            await store.CreateServerAsync(Protobuf.StoredRecords.DecodeServer(Convert.FromHexString(StoredRecordsTests.GoServerWithUnknownField)), Ct);
        }
        using var c = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT (SELECT record FROM services WHERE id = 'web'), (SELECT record FROM servers WHERE service_id = 'web')";
        using var r = cmd.ExecuteReader();
        Assert.True(r.Read());

        Assert.Equal(StoredRecordsTests.GoService, Convert.ToHexStringLower((byte[])r.GetValue(0)));
        Assert.Equal(StoredRecordsTests.GoServerWithUnknownField, Convert.ToHexStringLower((byte[])r.GetValue(1)));
    }

    [Fact]
    public async Task AStoreFromBeforeChangesCarriedRecords_IsUpgraded_AndItsOldChangesMakeAWatcherReList()
    {
        long start;
        await using (var store = Open())
        {
            start = (await store.ListAsync(Ct)).Revision;
            await store.CreateServiceAsync(Service("web", "198.18.0.1"), Ct);
        }
        using (var c = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "ALTER TABLE changes DROP COLUMN record"; // the file as an older build left it
            cmd.ExecuteNonQuery();
        }

        await using var reopened = Open();
        await reopened.CreateServiceAsync(Service("api", "198.18.0.2"), Ct);

        // What the old build wrote is not in its log; a watch from before it must re-list, one from after it need not.
        Assert.Equal(StoreChangeKind.Resync, (await FirstChange(reopened, start)).Kind);
        var api = await FirstChange(reopened, start + 1);
        Assert.Equal(Service("api", "198.18.0.2"), api.Service?.Message);
    }

    private static async Task<StoreChange> FirstChange(SqliteStore store, long after)
    {
        await foreach (var change in store.WatchAsync(after, Ct)) return change;
        throw new InvalidOperationException("the watch ended without a change");
    }

    [Fact]
    public async Task ASecondInstanceOnTheSameFile_IsSeenByTheWatchThroughPolling()
    {
        await using var a = Open();
        await using var b = Open();
        var start = (await a.ListAsync(Ct)).Revision;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        await using var changes = a.WatchAsync(start, timeout.Token).GetAsyncEnumerator(timeout.Token);
        var next = changes.MoveNextAsync().AsTask();
        await Task.Delay(300, Ct);

        var clock = Stopwatch.StartNew();
        await b.CreateServiceAsync(Service("web"), Ct);

        Assert.True(await next);
        Assert.Equal("services/web", changes.Current.Key);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"took {clock.Elapsed}");
    }

    [Fact]
    public async Task TwoInstancesWritingAtOnce_LoseNothingAndShareOneRevisionSequence()
    {
        await using var a = Open();
        await using var b = Open();

        await Task.WhenAll(
            Task.Run(async () => { for (var i = 0; i < 20; i++) await a.CreateServiceAsync(Service($"a{i}", $"10.0.1.{i + 1}"), Ct); }, Ct),
            Task.Run(async () => { for (var i = 0; i < 20; i++) await b.CreateServiceAsync(Service($"b{i}", $"10.0.2.{i + 1}"), Ct); }, Ct));

        var list = await a.ListAsync(Ct);
        Assert.Equal(40, list.Items.Count);
        Assert.Equal(40, list.Revision);
        Assert.Equal(40, (await b.ListAsync(Ct)).Revision);
    }

    [Fact]
    public async Task TwoInstancesRacingForOneServiceKey_ExactlyOneWins()
    {
        await using var a = Open();
        await using var b = Open();

        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(async () =>
        {
            try
            {
                await (i % 2 == 0 ? a : b).CreateServiceAsync(Service($"web{i}", "10.0.0.1", 80), Ct);
                return null;
            }
            catch (StoreException e)
            {
                return e;
            }
        }, Ct)));

        Assert.Equal(1, results.Count(r => r is null));
        Assert.All(results.Where(r => r is not null), r => Assert.IsType<AlreadyExistsException>(r));
    }

    [Fact]
    public async Task History_IsKeptForTheConfiguredRevisions_ThenAWatchFromBeforeGetsResync()
    {
        await using var store = Open(history: 3);
        for (var i = 0; i < 6; i++) await store.CreateServiceAsync(Service($"s{i}", $"10.0.0.{i + 1}"), Ct);

        var fromStart = await First(store.WatchAsync(0, Ct));
        var recent = await First(store.WatchAsync(3, Ct));

        Assert.Equal(new StoreChange(StoreChangeKind.Resync, "", 6), fromStart);
        Assert.Equal(new StoreChange(StoreChangeKind.Put, "services/s3", 4), recent);
    }

    [Fact]
    public async Task Watch_FromARevisionThisFileNeverHad_GetsResync()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("web"), Ct);

        Assert.Equal(StoreChangeKind.Resync, (await First(store.WatchAsync(1000, Ct))).Kind);
    }

    [Fact]
    public async Task AFileThatIsNotADatabase_IsUnavailable()
    {
        await File.WriteAllTextAsync(DbPath, new string('x', 4096), Ct);

        var e = Assert.Throws<StoreUnavailableException>(() => Open());

        Assert.Contains(DbPath, e.Message);
    }

    [Fact]
    public void APathThatCannotBeCreated_IsUnavailable()
    {
        var blocker = _dir.File("file");
        File.WriteAllText(blocker, "");

        Assert.Throws<StoreUnavailableException>(() => new SqliteStore(Path.Combine(blocker, "merlin.db")));
    }

    [Fact]
    public async Task AClosedStore_RefusesCallsAndEndsItsWatch()
    {
        var store = Open();
        await store.CreateServiceAsync(Service("web"), Ct);
        var watch = First(store.WatchAsync(1, Ct));
        await Task.Delay(100, Ct);

        await store.DisposeAsync();

        await Assert.ThrowsAsync<StoreUnavailableException>(() => watch.WaitAsync(TimeSpan.FromSeconds(5), Ct));
        await Assert.ThrowsAsync<StoreUnavailableException>(() => store.ListAsync(Ct));
        await Assert.ThrowsAsync<StoreUnavailableException>(() => store.CreateServiceAsync(Service("api", "10.0.0.2"), Ct));
    }

    [Fact]
    public async Task DeletingTheService_LeavesNoOrphanServerRows()
    {
        await using (var store = Open())
        {
            await store.CreateServiceAsync(Service("svc1", "10.0.0.1"), Ct);
            await store.CreateServiceAsync(Service("svc10", "10.0.0.10"), Ct);
            await store.CreateServerAsync(Server("svc1", "10.1.0.1"), Ct);
            await store.CreateServerAsync(Server("svc10", "10.1.0.1"), Ct);
            await store.DeleteServiceAsync("svc1", Ct);
        }

        using var c = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT group_concat(service_id) FROM servers";
        Assert.Equal("svc10", cmd.ExecuteScalar());
    }

    private static async Task<StoreChange> First(IAsyncEnumerable<StoreChange> changes)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        await foreach (var c in changes.WithCancellation(timeout.Token)) return c;
        throw new InvalidOperationException("the watch ended without a change");
    }
}
