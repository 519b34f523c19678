using Merlin.Store.Sqlite;
using Merlin.Testing;

namespace Merlin.Store.Tests;

/// <summary>
/// The contract against the embedded store: a fresh database file per test. The watch poll is slow here,
/// so a watch that reports a write promptly proves the in-process wake-up, not the poll.
/// </summary>
public sealed class SqliteStoreContractTests : StoreContractTests
{
    private readonly TempDir _dir = new("sqlite");

    protected override Task<IStore> OpenAsync() =>
        Task.FromResult<IStore>(new SqliteStore(_dir.File("merlin.db"), new SqliteStoreOptions { WatchPollInterval = TimeSpan.FromSeconds(10) }));

    protected override Task CompactAsync(IStore store, long revision) => ((SqliteStore)store).CompactHistoryAsync(revision, Ct);

    protected override Task<IStore> OpenWithTablesAsync(ServiceTableDeriver derive) =>
        Task.FromResult<IStore>(new SqliteStore(_dir.File("tables.db"), new SqliteStoreOptions { WatchPollInterval = TimeSpan.FromSeconds(10), DeriveTable = derive }));

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        _dir.Dispose();
    }
}
