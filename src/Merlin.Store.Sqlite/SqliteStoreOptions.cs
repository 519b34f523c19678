namespace Merlin.Store.Sqlite;

public sealed class SqliteStoreOptions
{
    /// <summary>
    /// How many revisions of change history are kept for <see cref="SqliteStore.WatchAsync"/>.
    /// A watcher that falls further behind than this gets one <see cref="StoreChangeKind.Resync"/>.
    /// </summary>
    public long HistoryRevisions { get; init; } = 10_000;

    /// <summary>How long a write waits for another process holding the database lock before failing as unavailable.</summary>
    public TimeSpan BusyTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How often a watch re-reads the change log when no in-process write woke it (writes from another process).</summary>
    public TimeSpan WatchPollInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Computes each service's lookup table in the transaction of the write that changed it (null: no tables).</summary>
    public ServiceTableDeriver? DeriveTable { get; init; }
}
