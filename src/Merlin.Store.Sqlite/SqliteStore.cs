using System.Runtime.CompilerServices;
using Google.Protobuf;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Microsoft.Data.Sqlite;
using Writer = Merlin.Store.Sqlite.SqliteGroupCommit.Writer;

namespace Merlin.Store.Sqlite;

/// <summary>
/// The embedded store: one SQLite file in WAL mode with synchronous=FULL, so a write is on disk when
/// its call returns. Every write bumps a global revision and appends to a change log (kept for
/// <see cref="SqliteStoreOptions.HistoryRevisions"/> revisions) from which <see cref="WatchAsync"/>
/// replays. A record's version is the revision that last wrote it.
/// Keys in <see cref="StoreChange"/> follow the etcd layout without the prefix
/// (<c>services/&lt;id&gt;</c>, <c>servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c>).
/// Safe for concurrent callers; several processes may share the file (SQLite's own locking).
/// </summary>
/// <remarks>
/// Writes are group-committed (<see cref="SqliteGroupCommit"/>). A commit costs one fsync of the WAL (milliseconds on real disks), and
/// committing each call on its own made the fsync the whole cost of a write: concurrent callers just
/// queued for it. So one writer thread, the only user of the write connection, takes every write
/// queued while the previous commit was on its way to disk and runs them in one IMMEDIATE
/// transaction, each inside its own SAVEPOINT: a call that fails (already exists, not found, conflict)
/// is rolled back to its savepoint and fails alone, the others go on. Each successful call still gets
/// its own revision and change-log entries, in queue order. The transaction commits once, and only
/// then is any caller's task completed, so a call returns after its write is durable, as before.
/// Reads use their own pooled connections (WAL readers) and never wait for the writer.
/// </remarks>
public sealed class SqliteStore : IStore
{
    private const int SchemaVersion = 1;
    private const long WatchBatchRevisions = 1000;

    private readonly string _path;
    private readonly string _connectionString;
    private readonly SqliteStoreOptions _options;
    private readonly SqliteConnection _writer;
    private readonly CancellationTokenSource _closed = new();
    private readonly SqliteGroupCommit _groupCommit;
    private TaskCompletionSource _changed = NewSignal();
    private int _disposed;

    /// <summary>Opens (creating if needed) the database at <paramref name="path"/> and its schema.</summary>
    /// <exception cref="StoreUnavailableException">The file cannot be opened or is not a Merlin store.</exception>
    public SqliteStore(string path, SqliteStoreOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        _path = Path.GetFullPath(path);
        _options = options ?? new SqliteStoreOptions();
        if (_options.HistoryRevisions < 1) throw new ArgumentOutOfRangeException(nameof(options), "HistoryRevisions must be at least 1");
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = _path,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            Pooling = true,
            DefaultTimeout = Math.Max(1, (int)Math.Ceiling(_options.BusyTimeout.TotalSeconds)),
        }.ToString();

        try
        {
            var dir = Path.GetDirectoryName(_path);
            if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
            if (File.Exists(_path) && new FileInfo(_path).Length > 0) CheckIntegrity();
            _writer = Open();
            CreateSchema(_writer);
            _groupCommit = new SqliteGroupCommit(_writer, _path, _options.HistoryRevisions,
                () => Interlocked.Exchange(ref _changed, NewSignal()).TrySetResult());
        }
        catch (SqliteException e)
        {
            SqliteConnection.ClearAllPools();
            throw new StoreUnavailableException($"sqlite store {_path}: cannot open: {e.Message}", e);
        }
        catch (IOException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: cannot open: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: cannot open: {e.Message}", e);
        }
    }

    public string Backend => "sqlite";

    /// <summary>The database file.</summary>
    public string FilePath => _path;

    /// <summary>Write transactions committed so far (each carries one or more calls); tests prove grouping with it.</summary>
    internal long CommittedTransactions => _groupCommit.CommittedTransactions;

    // ---------------------------------------------------------------- services

    public Task CreateServiceAsync(StoredService stored, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        return WriteAsync(w =>
        {
            if (w.Scalar<long>("SELECT COUNT(*) FROM services WHERE id = $id", ("$id", service.Id)) > 0)
                throw new AlreadyExistsException($"service \"{service.Id}\" already exists");
            ThrowIfIdentityTaken(w, identity, service, exceptId: null);
            var record = service.ToByteArray();
            w.Execute("INSERT INTO services (id, identity, record, version) VALUES ($id, $identity, $record, $rev)",
                ("$id", service.Id), ("$identity", identity), ("$record", record), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServiceKey(service.Id), record);
        }, ct);
    }

    public Task<Versioned<StoredService>?> GetServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        return ReadAsync(c =>
        {
            using var cmd = Command(c, "SELECT record, version FROM services WHERE id = $id", ("$id", id));
            using var r = cmd.ExecuteReader();
            return r.Read() ? new Versioned<StoredService>(ParseService(r, 0, ServiceKey(id)), r.GetInt64(1)) : null;
        }, ct);
    }

    public Task UpdateServiceAsync(StoredService stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        return WriteAsync(w =>
        {
            var current = w.Scalar<long?>("SELECT version FROM services WHERE id = $id", ("$id", service.Id))
                ?? throw new NotFoundException($"service \"{service.Id}\" not found");
            if (current != expectedVersion)
                throw new ConflictException($"service \"{service.Id}\" changed since version {expectedVersion} (now {current}); re-read and retry");
            ThrowIfIdentityTaken(w, identity, service, exceptId: service.Id);
            var record = service.ToByteArray();
            w.Execute("UPDATE services SET identity = $identity, record = $record, version = $rev WHERE id = $id",
                ("$id", service.Id), ("$identity", identity), ("$record", record), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServiceKey(service.Id), record);
            DeriveTable(w, service.Id);
        }, ct);
    }

    public Task DeleteServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        return WriteAsync(w =>
        {
            if (w.Scalar<long>("SELECT COUNT(*) FROM services WHERE id = $id", ("$id", id)) == 0)
                throw new NotFoundException($"service \"{id}\" not found");
            var endpoints = w.Strings("SELECT endpoint FROM servers WHERE service_id = $id ORDER BY endpoint", ("$id", id));
            if (w.Execute("DELETE FROM tables WHERE service_id = $id", ("$id", id)) > 0) w.Changed(StoreChangeKind.Delete, TableKey(id));
            w.Execute("DELETE FROM servers WHERE service_id = $id", ("$id", id));
            w.Execute("DELETE FROM services WHERE id = $id", ("$id", id));
            w.Changed(StoreChangeKind.Delete, ServiceKey(id));
            foreach (var ep in endpoints) w.Changed(StoreChangeKind.Delete, ServerKey(id, ep));
        }, ct);
    }

    // ---------------------------------------------------------------- servers

    public Task CreateServerAsync(StoredServer stored, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var server = StoredRecords.Message(stored);
        var endpoint = Endpoint(server);
        return WriteAsync(w =>
        {
            var service = w.Scalar<byte[]?>("SELECT record FROM services WHERE id = $id", ("$id", server.ServiceID))
                ?? throw new NotFoundException($"service \"{server.ServiceID}\" not found");
            if (StoredRecords.FamilyMismatch(StoredRecords.Identity(DecodeService(service, ServiceKey(server.ServiceID))), server) is { } wrongFamily)
                throw new Merlin.Model.ValidationException(wrongFamily);
            if (w.Scalar<long>("SELECT COUNT(*) FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", server.ServiceID), ("$ep", endpoint)) > 0)
                throw new AlreadyExistsException($"server {endpoint} already exists in service \"{server.ServiceID}\"");
            var record = server.ToByteArray();
            w.Execute("INSERT INTO servers (service_id, endpoint, record, version) VALUES ($id, $ep, $record, $rev)",
                ("$id", server.ServiceID), ("$ep", endpoint), ("$record", record), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServerKey(server.ServiceID, endpoint), record);
            DeriveTable(w, server.ServiceID);
        }, ct);
    }

    public Task<Versioned<StoredServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var endpoint = $"{ip}:{port}";
        return ReadAsync(c =>
        {
            using var cmd = Command(c, "SELECT record, version FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", serviceId), ("$ep", endpoint));
            using var r = cmd.ExecuteReader();
            return r.Read() ? new Versioned<StoredServer>(ParseServer(r, 0, ServerKey(serviceId, endpoint)), r.GetInt64(1)) : null;
        }, ct);
    }

    public Task UpdateServerAsync(StoredServer stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var server = StoredRecords.Message(stored);
        var endpoint = Endpoint(server);
        return WriteAsync(w =>
        {
            var current = w.Scalar<long?>("SELECT version FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", server.ServiceID), ("$ep", endpoint))
                ?? throw new NotFoundException($"server {endpoint} not found in service \"{server.ServiceID}\"");
            if (current != expectedVersion)
                throw new ConflictException($"server {endpoint} of service \"{server.ServiceID}\" changed since version {expectedVersion} (now {current}); re-read and retry");
            var record = server.ToByteArray();
            w.Execute("UPDATE servers SET record = $record, version = $rev WHERE service_id = $id AND endpoint = $ep",
                ("$id", server.ServiceID), ("$ep", endpoint), ("$record", record), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServerKey(server.ServiceID, endpoint), record);
            DeriveTable(w, server.ServiceID);
        }, ct);
    }

    public Task DeleteServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var endpoint = $"{ip}:{port}";
        return WriteAsync(w =>
        {
            if (w.Execute("DELETE FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", serviceId), ("$ep", endpoint)) == 0)
                throw new NotFoundException($"server {endpoint} not found in service \"{serviceId}\"");
            w.Changed(StoreChangeKind.Delete, ServerKey(serviceId, endpoint));
            DeriveTable(w, serviceId);
        }, ct);
    }

    public Task DeleteServerAsync(string serviceId, string ip, uint port, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var endpoint = $"{ip}:{port}";
        return WriteAsync(w =>
        {
            var current = w.Scalar<long?>("SELECT version FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", serviceId), ("$ep", endpoint))
                ?? throw new NotFoundException($"server {endpoint} not found in service \"{serviceId}\"");
            if (current != expectedVersion)
                throw new ConflictException($"server {endpoint} of service \"{serviceId}\" changed since version {expectedVersion} (now {current}); re-read and retry");
            w.Execute("DELETE FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", serviceId), ("$ep", endpoint));
            w.Changed(StoreChangeKind.Delete, ServerKey(serviceId, endpoint));
            DeriveTable(w, serviceId);
        }, ct);
    }

    // ---------------------------------------------------------------- lookup tables

    /// <summary>
    /// The service's table, recomputed from its record, its servers (in endpoint order) and the table
    /// stored before, in the transaction of the write that changed them (see <see cref="ServiceTableDeriver"/>).
    /// Written only when it changed, so a write that changes nothing of the table writes nothing more.
    /// </summary>
    private void DeriveTable(Writer w, string serviceId)
    {
        if (_options.DeriveTable is not { } derive) return;
        var serviceRecord = w.Blobs("SELECT record FROM services WHERE id = $id", ("$id", serviceId));
        if (serviceRecord.Count == 0) return;
        var service = StoredRecords.DecodeService(serviceRecord[0]);
        var servers = w.Blobs("SELECT record FROM servers WHERE service_id = $id ORDER BY endpoint", ("$id", serviceId))
            .Select(b => StoredRecords.DecodeServer(b)).ToList();
        var previous = w.Blobs("SELECT data FROM tables WHERE service_id = $id", ("$id", serviceId)) is [var had] ? had : null;
        var next = derive(service, servers, previous);
        if (next is null)
        {
            if (previous is not null && w.Execute("DELETE FROM tables WHERE service_id = $id", ("$id", serviceId)) > 0)
                w.Changed(StoreChangeKind.Delete, TableKey(serviceId));
            return;
        }
        if (previous is not null && previous.AsSpan().SequenceEqual(next)) return;
        w.Execute("INSERT OR REPLACE INTO tables (service_id, data, version) VALUES ($id, $data, $rev)",
            ("$id", serviceId), ("$data", next), ("$rev", w.Revision));
        w.Changed(StoreChangeKind.Put, TableKey(serviceId), next);
    }

    // ---------------------------------------------------------------- settings

    // One row of meta (its value a protobuf blob): no schema change, and no revision, since nothing watches them.
    public Task<StoredSettings> GetSettingsAsync(CancellationToken ct = default) => ReadAsync(c =>
    {
        using var cmd = Command(c, "SELECT value FROM meta WHERE key = 'settings'");
        return StoredRecords.DecodeSettings(cmd.ExecuteScalar() as byte[] ?? []);
    }, ct);

    public Task SetSettingsAsync(StoredSettings settings, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var blob = StoredRecords.Encode(settings);
        return WriteAsync(w => w.Execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('settings', $value)", ("$value", blob)), ct);
    }

    // ---------------------------------------------------------------- list and watch

    public Task<long> GetRevisionAsync(CancellationToken ct = default) => ReadAsync(c =>
    {
        using var tx = c.BeginTransaction(deferred: true);
        return ReadMeta(c, tx, "revision");
    }, ct);

    public Task<StoreSnapshot> ListAsync(CancellationToken ct = default) => ReadAsync(c =>
    {
        using var tx = c.BeginTransaction(deferred: true);
        var revision = ReadMeta(c, tx, "revision");
        var (items, _) = ReadPage(c, tx, after: null, int.MaxValue);
        tx.Commit();
        return new StoreSnapshot(items, revision);
    }, ct);

    /// <summary>
    /// Pages by id inside one read transaction, whose WAL snapshot keeps every page at the revision of the first.
    /// While it is open a checkpoint cannot pass that snapshot (the WAL grows meanwhile): callers read it through.
    /// </summary>
    public async IAsyncEnumerable<StorePage> ListPagesAsync(int pageSize, [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageSize, 1);
        ThrowIfClosed(ct);
        using var c = Guarded(Open);
        using var tx = Guarded(() => c.BeginTransaction(deferred: true));
        var revision = Guarded(() => ReadMeta(c, tx, "revision")); // the first read fixes the snapshot
        string? after = null;
        var any = false;
        while (true)
        {
            ThrowIfClosed(ct);
            var (items, last) = Guarded(() => ReadPage(c, tx, after, pageSize));
            if (items.Count > 0 || !any) yield return new StorePage(items, revision);
            any = true;
            if (items.Count < pageSize) yield break;
            after = last;
            await Task.Yield(); // each page on its own turn: a caller's cancellation or disposal is seen between pages
        }
    }

    /// <summary>
    /// Up to <paramref name="pageSize"/> services after the id <paramref name="after"/> (null: from the first), with their
    /// servers and tables; a whole list is one page of <see cref="int.MaxValue"/>.
    /// </summary>
    private (List<StoreItem> Items, string? Last) ReadPage(SqliteConnection c, SqliteTransaction tx, string? after, int pageSize)
    {
        var services = new List<(string Id, StoredService Record)>(Math.Min(pageSize, 1024));
        using (var cmd = Command(c, "SELECT id, record FROM services WHERE $after IS NULL OR id > $after ORDER BY id LIMIT $n", ("$after", after), ("$n", pageSize)))
        {
            cmd.Transaction = tx;
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                var id = r.GetString(0);
                services.Add((id, ParseService(r, 1, ServiceKey(id))));
            }
        }
        if (services.Count == 0) return ([], null);
        var (first, last) = (services[0].Id, services[^1].Id);
        var servers = services.ToDictionary(s => s.Id, _ => new List<StoredServer>(), StringComparer.Ordinal);
        using (var cmd = Command(c, "SELECT service_id, endpoint, record FROM servers WHERE service_id >= $first AND service_id <= $last ORDER BY service_id, endpoint",
            ("$first", first), ("$last", last)))
        {
            cmd.Transaction = tx;
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                var id = r.GetString(0);
                if (servers.TryGetValue(id, out var list)) list.Add(ParseServer(r, 2, ServerKey(id, r.GetString(1))));
            }
        }
        var tables = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        using (var cmd = Command(c, "SELECT service_id, data FROM tables WHERE service_id >= $first AND service_id <= $last", ("$first", first), ("$last", last)))
        {
            cmd.Transaction = tx;
            using var r = cmd.ExecuteReader();
            while (r.Read()) tables[r.GetString(0)] = Bytes(r, 1);
        }
        return (services.Select(s => new StoreItem(s.Record, servers[s.Id]) { Table = tables.GetValueOrDefault(s.Id) }).ToList(), last);
    }

    private T Guarded<T>(Func<T> read)
    {
        try
        {
            return read();
        }
        catch (SqliteException e)
        {
            throw Unavailable(e);
        }
    }

    public Task<StoreItem?> GetItemAsync(string serviceId, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        return ReadAsync(c =>
        {
            using var tx = c.BeginTransaction(deferred: true);
            StoredService service;
            using (var cmd = Command(c, "SELECT record FROM services WHERE id = $id", ("$id", serviceId)))
            {
                cmd.Transaction = tx;
                using var r = cmd.ExecuteReader();
                if (!r.Read()) return null;
                service = ParseService(r, 0, ServiceKey(serviceId));
            }
            var servers = new List<StoredServer>();
            using (var cmd = Command(c, "SELECT endpoint, record FROM servers WHERE service_id = $id ORDER BY endpoint", ("$id", serviceId)))
            {
                cmd.Transaction = tx;
                using var r = cmd.ExecuteReader();
                while (r.Read()) servers.Add(ParseServer(r, 1, ServerKey(serviceId, r.GetString(0))));
            }
            byte[]? table = null;
            using (var cmd = Command(c, "SELECT data FROM tables WHERE service_id = $id", ("$id", serviceId)))
            {
                cmd.Transaction = tx;
                using var r = cmd.ExecuteReader();
                if (r.Read()) table = Bytes(r, 0);
            }
            tx.Commit();
            return (StoreItem?)new StoreItem(service, servers) { Table = table };
        }, ct);
    }

    /// <summary>
    /// Replays the change log after <paramref name="afterRevision"/>, then follows new writes: woken at
    /// once by writes through this instance, and by polling for writes from other processes. If the
    /// history needed was trimmed (or the revision is ahead of this database) one
    /// <see cref="StoreChangeKind.Resync"/> carrying the current revision is yielded and the watch ends.
    /// </summary>
    public async IAsyncEnumerable<StoreChange> WatchAsync(long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _closed.Token);
        var last = afterRevision;
        while (true)
        {
            ThrowIfClosed(ct);
            var signal = Volatile.Read(ref _changed).Task;
            var queried = last;
            var batch = await ReadAsync(c => ReadChanges(c, queried), ct).ConfigureAwait(false);
            if (batch.Resync)
            {
                yield return new StoreChange(StoreChangeKind.Resync, "", batch.Current);
                yield break;
            }
            foreach (var change in batch.Changes) yield return change;
            // The batch covered every revision up to here (each write logs at least one change).
            last = Math.Min(batch.Current, queried + WatchBatchRevisions);
            if (last < batch.Current) continue;
            try
            {
                await signal.WaitAsync(_options.WatchPollInterval, linked.Token).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }
            catch (OperationCanceledException)
            {
                ThrowIfClosed(ct);
                throw;
            }
        }
    }

    /// <summary>
    /// Drops change history up to and including <paramref name="throughRevision"/> (at most the current
    /// revision); watchers resuming from before it get a <see cref="StoreChangeKind.Resync"/>.
    /// </summary>
    public Task CompactHistoryAsync(long throughRevision, CancellationToken ct = default) =>
        _groupCommit.CompactAsync(throughRevision, ct);

    /// <summary>
    /// Closes the store: the transaction being written is finished (its callers get their answer),
    /// writes still queued fail as unavailable, watches end.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        _closed.Cancel();
        await _groupCommit.StopAsync().ConfigureAwait(false);
        _writer.Dispose();
        SqliteConnection.ClearPool(new SqliteConnection(_connectionString));
    }

    // ---------------------------------------------------------------- plumbing

    private Task WriteAsync(Action<Writer> body, CancellationToken ct) => _groupCommit.WriteAsync(body, ct);

    private sealed record ChangeBatch(bool Resync, long Current, List<StoreChange> Changes);

    private ChangeBatch ReadChanges(SqliteConnection c, long after)
    {
        using var tx = c.BeginTransaction(deferred: true);
        var current = ReadMeta(c, tx, "revision");
        var compacted = ReadMeta(c, tx, "compacted");
        if (after < compacted || after > current) return new ChangeBatch(true, current, []);
        var changes = new List<StoreChange>();
        using var cmd = Command(c, "SELECT revision, kind, key, record FROM changes WHERE revision > $after AND revision <= $upto ORDER BY revision, seq",
            ("$after", after), ("$upto", after + WatchBatchRevisions));
        cmd.Transaction = tx;
        using (var r = cmd.ExecuteReader())
        {
            while (r.Read())
            {
                var kind = (StoreChangeKind)r.GetInt32(1);
                var key = r.GetString(2);
                var change = new StoreChange(kind, key, r.GetInt64(0));
                if (kind == StoreChangeKind.Put && key.StartsWith("tables/", StringComparison.Ordinal))
                {
                    if (r.IsDBNull(3)) return new ChangeBatch(true, current, []); // logged before changes carried tables
                    change = change with { Table = (byte[])r.GetValue(3) };
                }
                else if (kind == StoreChangeKind.Put && (key.StartsWith("services/", StringComparison.Ordinal) || key.StartsWith("servers/", StringComparison.Ordinal)))
                {
                    // Logged by a build from before changes carried records (an upgrade, or an older process on the
                    // same file): what was written is unknown here, so the follower must re-read.
                    if (r.IsDBNull(3)) return new ChangeBatch(true, current, []);
                    change = key.StartsWith("services/", StringComparison.Ordinal)
                        ? change with { Service = ParseService(r, 3, key) }
                        : change with { Server = ParseServer(r, 3, key) };
                }
                changes.Add(change);
            }
        }
        tx.Commit();
        return new ChangeBatch(false, current, changes);
    }

    private Task<T> ReadAsync<T>(Func<SqliteConnection, T> body, CancellationToken ct)
    {
        ThrowIfClosed(ct);
        try
        {
            using var c = Open();
            return Task.FromResult(body(c));
        }
        catch (SqliteException e)
        {
            throw Unavailable(e);
        }
    }

    /// <summary>
    /// An existing file is checked before anything is written to it (switching to WAL, the schema): a damaged
    /// or foreign file is refused as it is, so the operator can still restore or inspect it.
    /// </summary>
    private void CheckIntegrity()
    {
        using var c = new SqliteConnection(new SqliteConnectionStringBuilder(_connectionString) { Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        c.Open();
        using var check = Command(c, "PRAGMA quick_check(1);");
        var result = check.ExecuteScalar() as string;
        if (!string.Equals(result, "ok", StringComparison.Ordinal))
            throw new StoreUnavailableException($"sqlite store {_path}: damaged: {result}");
        using var tables = Command(c, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT IN ('meta', 'services', 'servers', 'tables', 'changes');");
        using var ours = Command(c, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta';");
        if (Convert.ToInt64(ours.ExecuteScalar(), System.Globalization.CultureInfo.InvariantCulture) == 0
            && Convert.ToInt64(tables.ExecuteScalar(), System.Globalization.CultureInfo.InvariantCulture) > 0)
            throw new StoreUnavailableException($"sqlite store {_path}: a SQLite database of something else (it has other tables and no merlin schema)");
    }

    private SqliteConnection Open()
    {
        var c = new SqliteConnection(_connectionString);
        try
        {
            c.Open();
            using var cmd = Command(c, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;");
            cmd.ExecuteNonQuery();
            return c;
        }
        catch
        {
            c.Dispose();
            throw;
        }
    }

    private void CreateSchema(SqliteConnection c)
    {
        using (var wal = Command(c, "PRAGMA journal_mode = WAL;"))
        {
            var mode = wal.ExecuteScalar() as string;
            if (!string.Equals(mode, "wal", StringComparison.OrdinalIgnoreCase))
                throw new StoreUnavailableException($"sqlite store {_path}: cannot switch to WAL mode (journal_mode is {mode})");
        }
        using var tx = c.BeginTransaction(deferred: false);
        using (var cmd = Command(c, """
            CREATE TABLE IF NOT EXISTS meta (
                key   TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            );
            INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', $schema), ('revision', 0), ('compacted', 0);
            CREATE TABLE IF NOT EXISTS services (
                id       TEXT PRIMARY KEY,
                identity TEXT UNIQUE,
                record   BLOB NOT NULL,
                version  INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS servers (
                service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
                endpoint   TEXT NOT NULL,
                record     BLOB NOT NULL,
                version    INTEGER NOT NULL,
                PRIMARY KEY (service_id, endpoint)
            );
            CREATE TABLE IF NOT EXISTS tables (
                service_id TEXT PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
                data       BLOB NOT NULL,
                version    INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS changes (
                seq      INTEGER PRIMARY KEY AUTOINCREMENT,
                revision INTEGER NOT NULL,
                kind     INTEGER NOT NULL,
                key      TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS changes_revision ON changes (revision);
            """, ("$schema", SchemaVersion)))
        {
            cmd.Transaction = tx;
            cmd.ExecuteNonQuery();
        }
        AddChangeRecords(c, tx);
        var schema = ReadMeta(c, tx, "schema");
        if (schema != SchemaVersion)
            throw new StoreUnavailableException($"sqlite store {_path}: schema version {schema} is not supported (this build reads {SchemaVersion})");
        tx.Commit();
    }

    /// <summary>
    /// The change log's <c>record</c> column (what each Put wrote), added to a store made before it. Additive: an
    /// older build ignores it, and the Puts it logs without one make a watcher re-read (<see cref="ReadChanges"/>).
    /// </summary>
    private static void AddChangeRecords(SqliteConnection c, SqliteTransaction tx)
    {
        using var columns = Command(c, "SELECT count(*) FROM pragma_table_info('changes') WHERE name = 'record'");
        columns.Transaction = tx;
        if (Convert.ToInt64(columns.ExecuteScalar(), System.Globalization.CultureInfo.InvariantCulture) > 0) return;
        using var alter = Command(c, "ALTER TABLE changes ADD COLUMN record BLOB");
        alter.Transaction = tx;
        alter.ExecuteNonQuery();
    }

    private static long ReadMeta(SqliteConnection c, SqliteTransaction tx, string key)
    {
        using var cmd = Command(c, "SELECT value FROM meta WHERE key = $key", ("$key", key));
        cmd.Transaction = tx;
        return cmd.ExecuteScalar() is long v ? v : throw new StoreUnavailableException($"sqlite store: meta entry \"{key}\" is missing");
    }

    private static SqliteCommand Command(SqliteConnection c, string sql, params (string Name, object? Value)[] args)
    {
        var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return cmd;
    }

    private static void ThrowIfIdentityTaken(Writer w, string? identity, VirtualService service, string? exceptId)
    {
        if (identity is null) return;
        var holder = w.Scalar<string?>("SELECT id FROM services WHERE identity = $identity AND ($except IS NULL OR id <> $except)",
            ("$identity", identity), ("$except", exceptId));
        if (holder is not null)
            throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holder}\"");
    }

    private static string? IdentityOrNull(VirtualService service)
    {
        var identity = StoredRecords.Identity(service);
        return identity.Length == 0 ? null : identity;
    }

    internal static string Describe(VirtualService service)
    {
        var k = service.Key;
        if (k is null) return "(none)";
        if (k.Fwmark != 0) return $"fwmark {k.Fwmark}";
        var ip = k.Ip.Contains(':') ? $"[{k.Ip}]" : k.Ip;
        return $"{k.Protocol.ToString().ToLowerInvariant()} {ip}:{k.Port}";
    }

    private static string Endpoint(RealServer server)
    {
        ArgumentNullException.ThrowIfNull(server);
        if (server.Key is null) throw new ArgumentException("server has no key", nameof(server));
        return $"{server.Key.Ip}:{server.Key.Port}";
    }

    private static string ServiceKey(string id) => $"services/{id}";

    private static string ServerKey(string serviceId, string endpoint) => $"servers/{serviceId}/{endpoint}";

    private static string TableKey(string serviceId) => $"tables/{serviceId}";

    /// <summary>A blob column; text where a hand edit left text (its reader then finds it damaged, rather than the store failing).</summary>
    internal static byte[] Bytes(SqliteDataReader r, int column) =>
        r.GetValue(column) as byte[] ?? System.Text.Encoding.UTF8.GetBytes(r.GetValue(column)?.ToString() ?? "");

    private StoredService ParseService(SqliteDataReader r, int column, string key) => DecodeService((byte[])r.GetValue(column), key);

    private StoredService DecodeService(byte[] record, string key)
    {
        try
        {
            return StoredRecords.DecodeService(record);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: record {key} is not a valid types.VirtualService: {e.Message}", e);
        }
    }

    private StoredServer ParseServer(SqliteDataReader r, int column, string key)
    {
        try
        {
            return StoredRecords.DecodeServer((byte[])r.GetValue(column));
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: record {key} is not a valid types.RealServer: {e.Message}", e);
        }
    }

    private StoreUnavailableException Unavailable(Exception e) =>
        new($"sqlite store {_path} is unavailable: {e.Message}", e);

    private StoreUnavailableException Closed() => new($"sqlite store {_path} is closed");

    private void ThrowIfClosed(CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (Volatile.Read(ref _disposed) == 1) throw Closed();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
