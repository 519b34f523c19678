using Microsoft.Data.Sqlite;

namespace Merlin.Store.Sqlite;

/// <summary>
/// The SQLite store's group commit: one writer thread, the only user of the write connection, takes every
/// write queued while the previous commit was on its way to disk (up to <see cref="MaxBatch"/>) and runs them
/// in one IMMEDIATE transaction, each inside its own SAVEPOINT. A call that fails (already exists, not found,
/// conflict) is rolled back to its savepoint and fails alone; the others go on. Each successful call gets its
/// own revision and change-log entries, in queue order. The transaction commits once, and only then is any
/// caller's task completed, so a call returns after its write is durable.
/// </summary>
/// <remarks>
/// Why: a commit costs one fsync of the WAL (milliseconds on real disks), and committing each call on its own
/// made the fsync the whole cost of a write — concurrent callers just queued for it.
/// </remarks>
/// <param name="writer">The write connection, used only by this type's thread until <see cref="StopAsync"/> ends; the caller disposes it.</param>
/// <param name="path">The database file, for messages.</param>
/// <param name="historyRevisions">How many revisions of change log each commit keeps.</param>
/// <param name="committed">Called on the writer thread after a commit that advanced the revision (watchers wake).</param>
internal sealed class SqliteGroupCommit
{
    /// <summary>The most writes one transaction takes; the rest wait for the next commit.</summary>
    public const int MaxBatch = 512;
    private const int SqliteConstraint = 19;
    private const string SavepointSql = "SAVEPOINT merlin_write";
    private const string ReleaseSql = "RELEASE merlin_write";
    private const string RollbackToSql = "ROLLBACK TO merlin_write";

    private readonly SqliteConnection _writer;
    private readonly string _path;
    private readonly long _historyRevisions;
    private readonly Action _committed;
    private readonly object _queueLock = new();
    private readonly Queue<WriteRequest> _queue = new();
    private readonly Dictionary<string, SqliteCommand> _statements = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _writerStopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _stopping;
    private long _commits;

    public SqliteGroupCommit(SqliteConnection writer, string path, long historyRevisions, Action committed)
    {
        _writer = writer;
        _path = path;
        _historyRevisions = historyRevisions;
        _committed = committed;
        new Thread(WriterLoop) { IsBackground = true, Name = "merlin-sqlite-writer" }.Start();
    }

    /// <summary>Write transactions committed so far (each carries one or more calls).</summary>
    public long CommittedTransactions => Interlocked.Read(ref _commits);

    /// <summary>One call inside the write transaction: the revision it will commit at, and the changes it made.</summary>
    internal sealed class Writer(SqliteGroupCommit commit, SqliteTransaction transaction, long revision)
    {
        public long Revision { get; } = revision;
        public List<(StoreChangeKind Kind, string Key, byte[]? Record)> Changes { get; } = [];

        /// <summary>Logs a change; a Put carries the record it wrote, which the watch hands on.</summary>
        public void Changed(StoreChangeKind kind, string key, byte[]? record = null) => Changes.Add((kind, key, record));

        public int Execute(string sql, params (string Name, object? Value)[] args) =>
            commit.Statement(transaction, sql, args).ExecuteNonQuery();

        public T Scalar<T>(string sql, params (string Name, object? Value)[] args)
        {
            var v = commit.Statement(transaction, sql, args).ExecuteScalar();
            if (v is null or DBNull) return default!;
            var t = Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T);
            return (T)Convert.ChangeType(v, t, System.Globalization.CultureInfo.InvariantCulture);
        }

        /// <summary>The first column of every row, as bytes.</summary>
        public List<byte[]> Blobs(string sql, params (string Name, object? Value)[] args)
        {
            var values = new List<byte[]>();
            using var r = commit.Statement(transaction, sql, args).ExecuteReader();
            while (r.Read()) values.Add(SqliteStore.Bytes(r, 0));
            return values;
        }

        /// <summary>The first column of every row.</summary>
        public List<string> Strings(string sql, params (string Name, object? Value)[] args)
        {
            var values = new List<string>();
            using var r = commit.Statement(transaction, sql, args).ExecuteReader();
            while (r.Read()) values.Add(r.GetString(0));
            return values;
        }
    }

    /// <summary>
    /// A prepared statement of the write connection, kept for the life of the store: the writer runs the
    /// same few statements for every call, and preparing them anew each time cost more than running them.
    /// Writer thread only.
    /// </summary>
    private SqliteCommand Statement(SqliteTransaction tx, string sql, params (string Name, object? Value)[] args)
    {
        if (!_statements.TryGetValue(sql, out var cmd))
        {
            cmd = _writer.CreateCommand();
            cmd.CommandText = sql;
            _statements.Add(sql, cmd);
        }
        cmd.Transaction = tx;
        cmd.Parameters.Clear();
        foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return cmd;
    }

    private long WriterMeta(SqliteTransaction tx, string key) =>
        Statement(tx, "SELECT value FROM meta WHERE key = $key", ("$key", key)).ExecuteScalar() is long v
            ? v
            : throw new StoreUnavailableException($"sqlite store {_path}: meta entry \"{key}\" is missing");

    /// <summary>Drops the change log through <paramref name="through"/>, in the write transaction.</summary>
    private void Trim(SqliteTransaction tx, long through)
    {
        if (through <= WriterMeta(tx, "compacted")) return;
        Statement(tx, "DELETE FROM changes WHERE revision <= $through", ("$through", through)).ExecuteNonQuery();
        Statement(tx, "UPDATE meta SET value = $through WHERE key = 'compacted'", ("$through", through)).ExecuteNonQuery();
    }

    /// <summary>
    /// One queued call: a write body (or, without one, a history compaction) and the task its caller
    /// awaits. A call canceled before the writer starts it is dropped; once started it runs to the commit.
    /// </summary>
    private sealed class WriteRequest(Action<Writer>? body, long compactThrough)
    {
        private const int Queued = 0, Started = 1, Canceled = 2;
        private int _state;
        private CancellationTokenRegistration _registration;

        public Action<Writer>? Body { get; } = body;
        public long CompactThrough { get; } = compactThrough;
        public TaskCompletionSource Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void CancelWith(CancellationToken ct)
        {
            if (ct.CanBeCanceled) _registration = ct.UnsafeRegister(static (r, t) => ((WriteRequest)r!).TryCancel(t), this);
        }

        /// <summary>False if the caller canceled first (its task is already canceled); true also on a re-run.</summary>
        public bool TryStart() => Interlocked.CompareExchange(ref _state, Started, Queued) != Canceled;

        public void Succeed()
        {
            _registration.Unregister();
            Completion.TrySetResult();
        }

        public void Fail(Exception e)
        {
            _registration.Unregister();
            Completion.TrySetException(e);
        }

        private void TryCancel(CancellationToken ct)
        {
            if (Interlocked.CompareExchange(ref _state, Canceled, Queued) == Queued) Completion.TrySetCanceled(ct);
        }
    }

    /// <summary>Queues a write; the task completes once the transaction that carries it is durable, or fails with the call's own error.</summary>
    public Task WriteAsync(Action<Writer> body, CancellationToken ct) => Enqueue(new WriteRequest(body, 0), ct);

    /// <summary>Queues a compaction of the change log through <paramref name="throughRevision"/> (at most the revision it runs at).</summary>
    public Task CompactAsync(long throughRevision, CancellationToken ct) => Enqueue(new WriteRequest(body: null, throughRevision), ct);

    /// <summary>Finishes the transaction being written (its callers get their answer), fails what is still queued, and waits for the writer thread to end.</summary>
    public Task StopAsync()
    {
        lock (_queueLock)
        {
            _stopping = true;
            Monitor.Pulse(_queueLock);
        }
        return _writerStopped.Task;
    }

    private Task Enqueue(WriteRequest request, CancellationToken ct)
    {
        if (ct.IsCancellationRequested) return Task.FromCanceled(ct);
        request.CancelWith(ct);
        lock (_queueLock)
        {
            if (_stopping)
            {
                request.Fail(Closed());
                return request.Completion.Task;
            }
            _queue.Enqueue(request);
            Monitor.Pulse(_queueLock);
        }
        return request.Completion.Task;
    }

    /// <summary>The writer thread: takes everything queued (up to <see cref="MaxBatch"/>), writes it as one transaction, repeats.</summary>
    private void WriterLoop()
    {
        var batch = new List<WriteRequest>(MaxBatch);
        try
        {
            while (true)
            {
                lock (_queueLock)
                {
                    while (_queue.Count == 0 && !_stopping) Monitor.Wait(_queueLock);
                    if (_stopping)
                    {
                        while (_queue.TryDequeue(out var left)) left.Fail(Closed());
                        return;
                    }
                    while (batch.Count < MaxBatch && _queue.TryDequeue(out var next)) batch.Add(next);
                }
                try
                {
                    var pending = batch;
                    while (pending.Count > 0) pending = WriteBatch(pending);
                }
                catch (Exception e)
                {
                    // A bug here must not leave callers waiting forever or stop the writer.
                    FailAll(batch, () => new StoreUnavailableException($"sqlite store {_path}: write failed: {e.Message}", e));
                }
                batch.Clear();
            }
        }
        finally
        {
            foreach (var statement in _statements.Values) statement.Dispose();
            _statements.Clear();
            _writerStopped.TrySetResult();
        }
    }

    /// <summary>
    /// Writes <paramref name="batch"/> in one transaction, one savepoint per call, commits, then answers
    /// every caller. Returns the calls to write again: empty, unless one call's SQLite error took the
    /// whole transaction down, in which case that call fails and the others are re-run in order.
    /// </summary>
    private List<WriteRequest> WriteBatch(List<WriteRequest> batch)
    {
        var outcomes = new List<(WriteRequest Request, Exception? Failure)>(batch.Count);
        SqliteTransaction tx;
        try
        {
            tx = _writer.BeginTransaction(deferred: false);
        }
        catch (SqliteException e)
        {
            FailAll(batch, () => Unavailable(e));
            return [];
        }
        using (tx)
        {
            long first, revision;
            try
            {
                first = revision = WriterMeta(tx, "revision");
            }
            catch (Exception e) when (e is SqliteException or StoreUnavailableException)
            {
                TryRollback(tx);
                FailAll(batch, () => Unavailable(e));
                return [];
            }

            for (var i = 0; i < batch.Count; i++)
            {
                var request = batch[i];
                if (!request.TryStart()) continue;
                try
                {
                    Statement(tx, SavepointSql).ExecuteNonQuery();
                    if (request.Body is null)
                    {
                        Trim(tx, Math.Min(request.CompactThrough, revision));
                    }
                    else
                    {
                        var w = new Writer(this, tx, revision + 1);
                        request.Body(w);
                        foreach (var (kind, key, record) in w.Changes)
                            w.Execute("INSERT INTO changes (revision, kind, key, record) VALUES ($rev, $kind, $key, $record)",
                                ("$rev", w.Revision), ("$kind", (int)kind), ("$key", key), ("$record", record));
                        revision = w.Revision;
                    }
                    Statement(tx, ReleaseSql).ExecuteNonQuery();
                    outcomes.Add((request, null));
                }
                catch (Exception e) when (e is not SqliteException || IsConstraint(e))
                {
                    // This call's own failure (already exists, not found, conflict, a constraint): undo it alone.
                    if (!RolledBackToSavepoint(tx)) return Abandon(tx, batch, i, outcomes, Unavailable(e));
                    outcomes.Add((request, IsConstraint(e) ? new AlreadyExistsException($"the record conflicts with an existing one: {e.Message}") : e));
                }
                catch (SqliteException e)
                {
                    // SQLite failed under this call (I/O, full disk, too big). If the transaction survived,
                    // only this call fails; if SQLite rolled it back, the calls before it must be re-run.
                    if (!RolledBackToSavepoint(tx)) return Abandon(tx, batch, i, outcomes, Unavailable(e));
                    outcomes.Add((request, Unavailable(e)));
                }
            }

            try
            {
                if (revision != first)
                {
                    Statement(tx, "UPDATE meta SET value = $rev WHERE key = 'revision'", ("$rev", revision)).ExecuteNonQuery();
                    Trim(tx, revision - _historyRevisions);
                }
                tx.Commit();
            }
            catch (Exception e) when (e is SqliteException or StoreUnavailableException or InvalidOperationException)
            {
                // Nothing of this transaction is on disk: no call in it may report success, and a call
                // refused because of an earlier call's (now undone) write was refused wrongly.
                TryRollback(tx);
                FailAll(outcomes.Select(o => o.Request), () => Unavailable(e));
                return [];
            }
            Interlocked.Increment(ref _commits);
            if (revision != first) _committed();
        }

        // Durable: only now may callers learn their outcome.
        foreach (var (request, failure) in outcomes)
        {
            if (failure is null) request.Succeed();
            else request.Fail(failure);
        }
        return [];
    }

    /// <summary>The transaction is gone: <paramref name="culprit"/>'s call fails, every other call is re-run from scratch.</summary>
    private static List<WriteRequest> Abandon(SqliteTransaction tx, List<WriteRequest> batch, int culprit, List<(WriteRequest Request, Exception? Failure)> outcomes, StoreException failure)
    {
        TryRollback(tx);
        batch[culprit].Fail(failure);
        var rerun = new List<WriteRequest>(batch.Count - 1);
        rerun.AddRange(outcomes.Select(o => o.Request));
        rerun.AddRange(batch.Skip(culprit + 1));
        return rerun;
    }

    /// <summary>Undoes the current call; false if the transaction itself is gone.</summary>
    private bool RolledBackToSavepoint(SqliteTransaction tx)
    {
        try
        {
            Statement(tx, RollbackToSql).ExecuteNonQuery();
            Statement(tx, ReleaseSql).ExecuteNonQuery();
            return true;
        }
        catch (Exception e) when (e is SqliteException or InvalidOperationException)
        {
            return false;
        }
    }

    private static void TryRollback(SqliteTransaction tx)
    {
        try
        {
            tx.Rollback();
        }
        catch (Exception e) when (e is SqliteException or InvalidOperationException)
        {
            // Already rolled back by SQLite itself.
        }
    }

    private static void FailAll(IEnumerable<WriteRequest> requests, Func<Exception> failure)
    {
        foreach (var r in requests) r.Fail(failure());
    }

    private static bool IsConstraint(Exception e) => e is SqliteException { SqliteErrorCode: SqliteConstraint };

    private StoreUnavailableException Unavailable(Exception e) =>
        new($"sqlite store {_path} is unavailable: {e.Message}", e);

    private StoreUnavailableException Closed() => new($"sqlite store {_path} is closed");
}
