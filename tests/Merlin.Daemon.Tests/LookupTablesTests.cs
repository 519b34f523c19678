using Merlin.Api;
using Merlin.Hashing;
using Merlin.Store;
using Merlin.Store.Sqlite;
using Merlin.Store.Tests;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.Data.Sqlite;

namespace Merlin.Daemon.Tests;

/// <summary>The API's table in the store the daemon opens: what a node reads after each write.</summary>
public sealed class LookupTablesTests : IDisposable
{
    private readonly TempDir _dir = new("tables");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose() => _dir.Dispose();

    private SqliteStore Open() => new(_dir.File("merlin.db"), new SqliteStoreOptions { DeriveTable = LookupTables.Derive });

    private static VirtualService Service(string id, params string[] flags)
    {
        var s = new VirtualService
        {
            Id = id,
            Key = new VirtualService.Types.Key { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp },
            Config = new VirtualService.Types.Config { Scheduler = "mh" },
        };
        s.Config.Flags.AddRange(flags);
        return s;
    }

    private static RealServer Server(string serviceId, int i, uint weight = 1) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = $"198.18.1.{i}", Port = 80 },
        Config = new RealServer.Types.Config { Weight = weight, Forward = ForwardMethod.Route },
    };

    private static async Task<MinimalDisruptionTable?> TableAsync(IStore store, string id) =>
        (await store.ListAsync(Ct)).Items.Single(i => i.Service.Id == id).Table is { } bytes ? MinimalDisruptionTable.Decode(bytes) : null;

    [Fact]
    public async Task MdTableService_GetsATableWithEveryServerWrite_AndADrainMovesOnlyThatServersSlots()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("web", "flag-2", "flag-3"), Ct);
        for (int i = 1; i <= 10; i++) await store.CreateServerAsync(Server("web", i), Ct);
        var before = await TableAsync(store, "web");
        Assert.NotNull(before);
        Assert.Equal(1004, before.Size);   // grown one server at a time by multiples: 251, 502, 1,004
        Assert.Equal(10, before.Servers.Count);
        Assert.All(before.SlotCounts(), c => Assert.InRange(c, 99, 101));

        // A drain (the API's DrainServer sets a deadline): weight 0 in the table, its slots to the others.
        var got = await store.GetServerAsync("web", "198.18.1.3", 80, Ct);
        var draining = got!.Value.Clone();
        draining.DrainDeadline = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddMinutes(5));
        await store.UpdateServerAsync(draining, got.Version, Ct);
        var after = await TableAsync(store, "web");
        Assert.Equal(0u, after!.Servers.Single(s => s.Id == "198.18.1.3:80").Weight);
        for (int s = 0; s < before.Size; s++)
            if (before.OwnerId(s) != after.OwnerId(s)) Assert.Equal("198.18.1.3:80", before.OwnerId(s));
        Assert.Equal(before.SlotCounts()[before.Servers.ToList().FindIndex(x => x.Id == "198.18.1.3:80")],
            Enumerable.Range(0, before.Size).Count(s => before.OwnerId(s) != after.OwnerId(s)));
        // The same record tells each moved slot's previous owner, for second chance on the real servers.
        var record = TableRecord.Decode((await store.ListAsync(Ct)).Items.Single().Table!);
        // (Slots it did not move keep what the adds before it recorded.)
        for (int s = 0; s < before.Size; s++)
            if (before.OwnerId(s) != after.OwnerId(s)) Assert.Equal("198.18.1.3:80", record.PreviousId(s));

        // Its removal then moves nothing.
        await store.DeleteServerAsync("web", "198.18.1.3", 80, Ct);
        var removed = await TableAsync(store, "web");
        Assert.Equal(after.Owners.ToArray().Select((_, s) => after.OwnerId(s)), Enumerable.Range(0, after.Size).Select(removed!.OwnerId));
    }

    [Fact]
    public async Task ADamagedTable_IsReplacedByTheTableComputedFromNothing_OnTheNextWrite()
    {
        await using (var store = Open())
        {
            await store.CreateServiceAsync(Service("web", "md-table"), Ct);
            for (int i = 1; i <= 4; i++) await store.CreateServerAsync(Server("web", i), Ct);
        }
        // Damage it behind the store's back, as a bad disk or a hand edit would.
        await using (var raw = new SqliteConnection($"Data Source={_dir.File("merlin.db")};Pooling=False"))
        {
            await raw.OpenAsync(Ct);
            await using var cmd = raw.CreateCommand();
            cmd.CommandText = "UPDATE tables SET data = CAST(substr(data, 1, length(data) - 9) || x'000000000000000000' AS BLOB)";
            Assert.Equal(1, await cmd.ExecuteNonQueryAsync(Ct));
        }
        await using (var store = Open())
        {
            var damaged = (await store.ListAsync(Ct)).Items.Single().Table!;
            Assert.Throws<TableFormatException>(() => MinimalDisruptionTable.Decode(damaged));
            await store.CreateServerAsync(Server("web", 5), Ct);
            var table = await TableAsync(store, "web");
            var fresh = MinimalDisruptionTable.Build(Enumerable.Range(1, 5).Select(i => ($"198.18.1.{i}:80", 1u)).ToList());
            Assert.Equal(fresh.Encode(), table!.Encode());
        }
    }

    [Fact]
    public void Describe_TellsListTheStoredTablesHash_OrWhyThereIsNone()
    {
        var table = MinimalDisruptionTable.Build([("198.18.1.1:80", 1), ("198.18.1.2:80", 1)]);
        var record = TableRecord.Of(table).Encode();
        Assert.Equal((table.HashText, ""), LookupTables.Describe(Service("web", "md-table"), record));
        var damaged = (byte[])record.Clone();
        damaged[10] ^= 1;
        var (hash, problem) = LookupTables.Describe(Service("web", "md-table"), damaged);
        Assert.Equal("", hash);
        Assert.StartsWith("damaged (hash mismatch", problem);
        Assert.StartsWith("no table stored yet", LookupTables.Describe(Service("web", "md-table"), null).Problem);
        Assert.Equal(("", ""), LookupTables.Describe(Service("web", "flag-2"), record));
    }

    [Fact]
    public async Task ServicesWithoutMdTable_KeepNoTable()
    {
        await using var store = Open();
        await store.CreateServiceAsync(Service("web", "flag-2"), Ct);
        await store.CreateServerAsync(Server("web", 1), Ct);
        Assert.Null(await TableAsync(store, "web"));
    }
}
