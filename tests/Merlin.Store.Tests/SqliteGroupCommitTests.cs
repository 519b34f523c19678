using Merlin.Store.Sqlite;
using Merlin.Testing;
using Microsoft.Data.Sqlite;
using static Merlin.Store.Tests.Records;

namespace Merlin.Store.Tests;

/// <summary>
/// The embedded store's group commit: calls queued while a commit is on its way to disk share the next
/// transaction, each in its own savepoint. To put many calls in one transaction on purpose, a test holds
/// the database's write lock from a plain connection (as a second process would): the writer blocks on
/// it with whatever it took, and everything issued meanwhile queues up for the transaction after.
/// </summary>
public sealed class SqliteGroupCommitTests : IDisposable
{
    private readonly TempDir _dir = new("sqlite-group");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string DbPath => _dir.File("merlin.db");

    private SqliteStore Open() => new(DbPath, new SqliteStoreOptions { WatchPollInterval = TimeSpan.FromSeconds(10) });

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task ManyCallsInOneTransaction_ExactlyTheRightOnesSucceed_AndAFailureUndoesOnlyItself()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("base", "10.9.9.9", 80), Ct);
        await store.CreateServerAsync(Server("base", "10.1.9.1"), Ct);
        var baseServer = (await store.GetServerAsync("base", "10.1.9.1", 8080, Ct))!;
        var start = (await store.ListAsync(Ct)).Revision;
        var commitsBefore = store.CommittedTransactions;

        // Each call, in the order issued, with what it must end in (null: success) and, on success, the changes it logs.
        var calls = new List<(string What, Func<Task> Call, Type? Fails, (StoreChangeKind, string)[] Logs)>();
        void Expect(string what, Func<Task> call, Type? fails, params (StoreChangeKind, string)[] logs) => calls.Add((what, call, fails, logs));
        var put = StoreChangeKind.Put;
        var del = StoreChangeKind.Delete;

        Expect("create a", () => store.CreateServiceAsync(Service("a", "10.0.0.1", 80), Ct), null, (put, "services/a"));
        Expect("create a again (id taken in this batch)", () => store.CreateServiceAsync(Service("a", "10.0.0.2", 80), Ct), typeof(AlreadyExistsException));
        Expect("create b on a's key", () => store.CreateServiceAsync(Service("b", "10.0.0.1", 80), Ct), typeof(AlreadyExistsException));
        Expect("create c on base's key (committed earlier)", () => store.CreateServiceAsync(Service("c", "10.9.9.9", 80), Ct), typeof(AlreadyExistsException));
        Expect("create b on its own key", () => store.CreateServiceAsync(Service("b", "10.0.0.2", 80), Ct), null, (put, "services/b"));
        Expect("server of a (created in this batch)", () => store.CreateServerAsync(Server("a", "10.1.0.1"), Ct), null, (put, "servers/a/10.1.0.1:8080"));
        Expect("the same server again", () => store.CreateServerAsync(Server("a", "10.1.0.1", weight: 7), Ct), typeof(AlreadyExistsException));
        Expect("server of c (whose create failed)", () => store.CreateServerAsync(Server("c", "10.1.0.1"), Ct), typeof(NotFoundException));
        Expect("update base's server at the version read", () => store.UpdateServerAsync(Server("base", "10.1.9.1", weight: 5), baseServer.Version, Ct), null, (put, "servers/base/10.1.9.1:8080"));
        Expect("update it again from the same (now stale) version", () => store.UpdateServerAsync(Server("base", "10.1.9.1", weight: 6), baseServer.Version, Ct), typeof(ConflictException));
        Expect("delete a service that never was", () => store.DeleteServiceAsync("ghost", Ct), typeof(NotFoundException));
        Expect("create d", () => store.CreateServiceAsync(Service("d", "10.0.0.4", 80), Ct), null, (put, "services/d"));
        Expect("server of d", () => store.CreateServerAsync(Server("d", "10.1.0.4"), Ct), null, (put, "servers/d/10.1.0.4:8080"));
        Expect("delete d with its server", () => store.DeleteServiceAsync("d", Ct), null, (del, "services/d"), (del, "servers/d/10.1.0.4:8080"));
        Expect("server of d after its delete", () => store.CreateServerAsync(Server("d", "10.1.0.5"), Ct), typeof(NotFoundException));
        Expect("delete d again", () => store.DeleteServiceAsync("d", Ct), typeof(NotFoundException));
        Expect("create d anew on the same key", () => store.CreateServiceAsync(Service("d", "10.0.0.4", 80), Ct), null, (put, "services/d"));
        // Forty services over twenty keys: the first of each key wins, and every loser leaves the winners alone.
        for (var i = 0; i < 40; i++)
        {
            var id = $"m{i}";
            var ip = $"10.2.0.{i % 20 + 1}";
            var wins = i < 20;
            Expect($"create {id} on {ip}", () => store.CreateServiceAsync(Service(id, ip, 80), Ct), wins ? null : typeof(AlreadyExistsException), wins ? [(put, $"services/{id}")] : []);
            Expect($"server of {id}", () => store.CreateServerAsync(Server(id, "10.3.0.1"), Ct), wins ? null : typeof(NotFoundException), wins ? [(put, $"servers/{id}/10.3.0.1:8080")] : []);
        }

        List<Task<Exception?>> outcomes;
        using (var holder = WriteLockHolder.Take(DbPath))
        {
            var warmup = store.CreateServiceAsync(Service("warmup", "10.0.0.99", 80), Ct);
            await Task.Delay(300, Ct); // the writer has taken it and waits for the lock
            outcomes = calls.Select(c => Outcome(c.Call)).ToList();
            await Task.Delay(100, Ct);
            Assert.False(warmup.IsCompleted);
            Assert.All(outcomes, o => Assert.False(o.IsCompleted, "a call completed before its transaction could commit"));
            holder.Release();
            await warmup;
        }
        var results = await Task.WhenAll(outcomes);

        for (var i = 0; i < calls.Count; i++)
            Assert.True(calls[i].Fails == results[i]?.GetType(), $"{calls[i].What}: expected {calls[i].Fails?.Name ?? "success"}, got {results[i]?.GetType().Name ?? "success"} {results[i]?.Message}");
        // The warm-up's transaction, then one for all the rest.
        Assert.Equal(2, store.CommittedTransactions - commitsBefore);

        // What is stored is exactly what the successful calls wrote.
        var list = await store.ListAsync(Ct);
        var stored = list.Items.ToDictionary(i => i.Service.Id, i => (i.Service.Key.Ip, Servers: i.Servers.Select(s => $"{s.Key.Ip}:{s.Config.Weight}").ToArray()));
        var expected = new Dictionary<string, (string Ip, string[] Servers)>
        {
            ["base"] = ("10.9.9.9", ["10.1.9.1:5"]),
            ["warmup"] = ("10.0.0.99", []),
            ["a"] = ("10.0.0.1", ["10.1.0.1:1"]),
            ["b"] = ("10.0.0.2", []),
            ["d"] = ("10.0.0.4", []),
        };
        for (var i = 0; i < 20; i++) expected[$"m{i}"] = ($"10.2.0.{i + 1}", ["10.3.0.1:1"]);
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), stored.Keys.Order(StringComparer.Ordinal));
        foreach (var (id, want) in expected)
        {
            Assert.Equal(want.Ip, stored[id].Ip);
            Assert.Equal(want.Servers, stored[id].Servers);
        }

        // One revision per successful call, in the order issued; a failed call takes none and logs nothing.
        var successes = calls.Where((_, i) => results[i] is null).ToList();
        Assert.Equal(start + 1 + successes.Count, list.Revision);
        var logged = new[] { (put, "services/warmup") }.Concat(successes.SelectMany(c => c.Logs)).ToList();
        var changes = await Collect(store, start, logged.Count);
        Assert.Equal(logged, changes.Select(c => (c.Kind, c.Key)));
        Assert.Equal(Enumerable.Range(1, successes.Count + 1).Select(r => start + r), changes.Select(c => c.Revision).Distinct());
        // A record's version is the revision of the call that wrote it.
        Assert.Equal(changes.Single(c => c.Key == "servers/base/10.1.9.1:8080").Revision, (await store.GetServerAsync("base", "10.1.9.1", 8080, Ct))!.Version);
        Assert.Equal(changes.Last(c => c.Key == "services/d").Revision, (await store.GetServiceAsync("d", Ct))!.Version);
    }

    [Fact]
    public async Task SQLiteFailingACallAfterItHasWritten_UndoesThatCallAlone_EvenWhenItTakesTheTransactionDown()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("base", "10.9.9.9", 80), Ct);
        // Triggers make SQLite itself fail a call after its record is written, when its change is logged:
        // a constraint (the statement fails), a value too big (a plain error), and RAISE(ROLLBACK), which
        // rolls the whole transaction back under every call in it.
        using (var c = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = """
                CREATE TRIGGER poison BEFORE INSERT ON changes WHEN NEW.key = 'services/poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END;
                CREATE TRIGGER toobig BEFORE INSERT ON changes WHEN NEW.key = 'services/toobig' BEGIN SELECT zeroblob(2000000000); END;
                CREATE TRIGGER doom BEFORE INSERT ON changes WHEN NEW.key = 'services/doom' BEGIN SELECT RAISE(ROLLBACK, 'doomed'); END;
                """;
            cmd.ExecuteNonQuery();
        }
        var start = (await store.ListAsync(Ct)).Revision;
        var commitsBefore = store.CommittedTransactions;

        Task<Exception?>[] outcomes;
        using (var holder = WriteLockHolder.Take(DbPath))
        {
            var warmup = store.CreateServiceAsync(Service("warmup", "10.0.0.99", 80), Ct);
            await Task.Delay(300, Ct);
            outcomes =
            [
                Outcome(() => store.CreateServiceAsync(Service("a", "10.0.0.1"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("poison", "10.0.0.2"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("b", "10.0.0.3"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("toobig", "10.0.0.4"), Ct)),
                Outcome(() => store.CreateServerAsync(Server("a", "10.1.0.1"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("doom", "10.0.0.5"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("c", "10.0.0.6"), Ct)),
                Outcome(() => store.CreateServiceAsync(Service("a", "10.0.0.7"), Ct)),
            ];
            holder.Release();
            await warmup;
        }
        var results = await Task.WhenAll(outcomes);

        Assert.Null(results[0]);
        Assert.IsType<AlreadyExistsException>(results[1]);
        Assert.Null(results[2]);
        Assert.IsType<StoreUnavailableException>(results[3]);
        Assert.Null(results[4]);
        Assert.IsType<StoreUnavailableException>(results[5]);
        Assert.Null(results[6]);
        Assert.IsType<AlreadyExistsException>(results[7]);
        var list = await store.ListAsync(Ct);
        Assert.Equal(["a", "b", "base", "c", "warmup"], list.Items.Select(i => i.Service.Id));
        Assert.Equal("10.0.0.1", list.Items[0].Service.Key.Ip);
        Assert.Equal("10.1.0.1", Assert.Single(list.Items[0].Servers).Key.Ip);
        Assert.Equal(
            ["services/warmup", "services/a", "services/b", "servers/a/10.1.0.1:8080", "services/c"],
            (await Collect(store, start, 5)).Select(c => c.Key));
        Assert.Equal(start + 5, list.Revision);
        // The warm-up's transaction and the one that held the rest after the doomed call was taken out.
        Assert.Equal(2, store.CommittedTransactions - commitsBefore);
    }

    [Fact]
    public async Task ConcurrentCallers_ShareCommits_AndEveryCallIsVisibleOnDiskWhenItReturns()
    {
        await using var store = Open();
        var commitsBefore = store.CommittedTransactions;
        var onDisk = new SqliteConnection($"Data Source={DbPath};Mode=ReadOnly;Pooling=False");
        onDisk.Open();
        var checkLock = new object();
        var missing = new List<string>();

        // 16 callers, each creating services and servers one call at a time, like API clients.
        await Task.WhenAll(Enumerable.Range(0, 16).Select(caller => Task.Run(async () =>
        {
            for (var j = 0; j < 8; j++)
            {
                var id = $"c{caller}-{j}";
                await store.CreateServiceAsync(Service(id, $"10.{caller}.{j}.1", 80), Ct);
                await store.CreateServerAsync(Server(id, "10.200.0.1"), Ct);
                // Returned: so it is committed, and an independent connection on the file sees it.
                lock (checkLock)
                {
                    using var cmd = onDisk.CreateCommand();
                    cmd.CommandText = "SELECT COUNT(*) FROM servers WHERE service_id = $id";
                    cmd.Parameters.AddWithValue("$id", id);
                    if ((long)cmd.ExecuteScalar()! != 1) missing.Add(id);
                }
            }
        }, Ct)));
        onDisk.Dispose();

        Assert.Empty(missing);
        Assert.Equal(256, (await store.ListAsync(Ct)).Revision);
        var commits = store.CommittedTransactions - commitsBefore;
        Assert.True(commits < 256, $"{commits} commits for 256 concurrent calls: nothing was grouped");
    }

    [Fact]
    public async Task WhatCompletedCallsWrote_SurvivesAStopWithoutClose_AndAReopen()
    {
        var store = Open();
        await Task.WhenAll(Enumerable.Range(0, 64).Select(async i =>
        {
            await store.CreateServiceAsync(Service($"s{i}", $"10.0.{i}.1", 80), Ct);
            await store.CreateServerAsync(FullServer($"s{i}", "10.1.0.1", 80), Ct);
        }));
        var written = await store.ListAsync(Ct);

        // The files as they are now, the store still open (no checkpoint, no close): what a killed process leaves.
        using var crashed = new TempDir("sqlite-crash");
        foreach (var suffix in new[] { "", "-wal" })
            if (File.Exists(DbPath + suffix)) File.Copy(DbPath + suffix, crashed.File("merlin.db" + suffix));
        await store.DisposeAsync();

        await using (var fromCrash = new SqliteStore(crashed.File("merlin.db")))
            AssertSame(written, await fromCrash.ListAsync(Ct));
        await using (var reopened = Open())
        {
            AssertSame(written, await reopened.ListAsync(Ct));
            // And it goes on from where it was.
            await reopened.CreateServiceAsync(Service("after", "10.9.0.1", 80), Ct);
            Assert.Equal(written.Revision + 1, (await reopened.ListAsync(Ct)).Revision);
        }

        static void AssertSame(StoreSnapshot expected, StoreSnapshot actual)
        {
            Assert.Equal(128, expected.Revision);
            Assert.Equal(expected.Revision, actual.Revision);
            Assert.Equal(expected.Items.Select(i => i.Service), actual.Items.Select(i => i.Service));
            Assert.Equal(expected.Items.SelectMany(i => i.Servers), actual.Items.SelectMany(i => i.Servers));
        }
    }

    [Fact]
    public async Task ACallCanceledWhileQueued_IsNotWritten_AndTheOthersAre()
    {
        await using var store = Open();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        Task first, canceled, after;
        using (var holder = WriteLockHolder.Take(DbPath))
        {
            first = store.CreateServiceAsync(Service("first", "10.0.0.1"), Ct);
            await Task.Delay(300, Ct);
            canceled = store.CreateServiceAsync(Service("canceled", "10.0.0.2"), cts.Token);
            after = store.CreateServiceAsync(Service("after", "10.0.0.3"), Ct);
            await cts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => canceled);
            holder.Release();
        }
        await first;
        await after;

        Assert.Equal(["after", "first"], (await store.ListAsync(Ct)).Items.Select(i => i.Service.Id));
        Assert.Equal(2, (await store.ListAsync(Ct)).Revision);
    }

    [Fact]
    public async Task Closing_FinishesTheTransactionUnderWay_AndRefusesWhatWasStillQueued()
    {
        var store = Open();
        Task inFlight, queued;
        ValueTask closing;
        using (var holder = WriteLockHolder.Take(DbPath))
        {
            inFlight = store.CreateServiceAsync(Service("in-flight", "10.0.0.1"), Ct);
            await Task.Delay(300, Ct);
            queued = store.CreateServiceAsync(Service("queued", "10.0.0.2"), Ct);
            closing = store.DisposeAsync();
            holder.Release();
        }
        await closing;

        await inFlight;
        await Assert.ThrowsAsync<StoreUnavailableException>(() => queued);
        await using var reopened = Open();
        Assert.Equal(["in-flight"], (await reopened.ListAsync(Ct)).Items.Select(i => i.Service.Id));
    }

    [Fact]
    public async Task HistoryCompaction_QueuedWithWrites_KeepsTheirOrder()
    {
        await using var store = Open();
        for (var i = 0; i < 3; i++) await store.CreateServiceAsync(Service($"s{i}", $"10.0.0.{i + 1}"), Ct);
        Task write, compact, later;
        using (var holder = WriteLockHolder.Take(DbPath))
        {
            write = store.CreateServiceAsync(Service("s3", "10.0.0.4"), Ct);
            await Task.Delay(300, Ct);
            compact = store.CompactHistoryAsync(long.MaxValue, Ct); // through the revision current when it runs: 4
            later = store.CreateServiceAsync(Service("s4", "10.0.0.5"), Ct);
            holder.Release();
        }
        await Task.WhenAll(write, compact, later);

        Assert.Equal([new StoreChange(StoreChangeKind.Put, "services/s4", 5)], await Collect(store, 4, 1));
        Assert.Equal([new StoreChange(StoreChangeKind.Resync, "", 5)], await Collect(store, 3, 1));
    }

    // ------------------------------------------------------------ helpers

    private static async Task<Exception?> Outcome(Func<Task> call)
    {
        try
        {
            await call();
            return null;
        }
        catch (StoreException e)
        {
            return e;
        }
    }

    /// <summary>The first <paramref name="count"/> changes after <paramref name="after"/>; 10 s at most.</summary>
    private static async Task<List<StoreChange>> Collect(SqliteStore store, long after, int count)
    {
        var list = new List<StoreChange>();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        await foreach (var c in store.WatchAsync(after, timeout.Token))
        {
            list.Add(c);
            if (list.Count == count) break;
        }
        return list;
    }

    /// <summary>Holds the database's write lock from a connection of its own, as another process would.</summary>
    private sealed class WriteLockHolder : IDisposable
    {
        private readonly SqliteConnection _connection;
        private bool _released;

        private WriteLockHolder(SqliteConnection connection) => _connection = connection;

        public static WriteLockHolder Take(string path)
        {
            var c = new SqliteConnection($"Data Source={path};Pooling=False");
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "BEGIN IMMEDIATE";
            cmd.ExecuteNonQuery();
            return new WriteLockHolder(c);
        }

        public void Release()
        {
            if (_released) return;
            _released = true;
            using var cmd = _connection.CreateCommand();
            cmd.CommandText = "ROLLBACK";
            cmd.ExecuteNonQuery();
        }

        public void Dispose()
        {
            Release();
            _connection.Dispose();
        }
    }
}
