using System.Runtime.CompilerServices;
using Google.Protobuf;
using Merlin.Wire;
using Microsoft.Data.Sqlite;

namespace Merlin.Store.Sqlite;

/// <summary>
/// The embedded store: one SQLite file in WAL mode with synchronous=FULL, so a write is on disk when
/// its call returns. Every write runs in one IMMEDIATE transaction that bumps a global revision and
/// appends to a change log (kept for <see cref="SqliteStoreOptions.HistoryRevisions"/> revisions) from
/// which <see cref="WatchAsync"/> replays. A record's version is the revision that last wrote it.
/// Keys in <see cref="StoreChange"/> follow the etcd layout without the prefix
/// (<c>services/&lt;id&gt;</c>, <c>servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c>).
/// Safe for concurrent callers; several processes may share the file (SQLite's own locking).
/// </summary>
public sealed class SqliteStore : IStore
{
    private const int SchemaVersion = 1;
    private const int SqliteConstraint = 19;
    private const long WatchBatchRevisions = 1000;

    private readonly string _path;
    private readonly string _connectionString;
    private readonly SqliteStoreOptions _options;
    private readonly SqliteConnection _writer;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly CancellationTokenSource _closed = new();
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
            _writer = Open();
            CreateSchema(_writer);
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

    // ---------------------------------------------------------------- services

    public Task CreateServiceAsync(VirtualService service, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(service);
        var identity = IdentityOrNull(service);
        return WriteAsync(w =>
        {
            if (w.Scalar<long>("SELECT COUNT(*) FROM services WHERE id = $id", ("$id", service.Id)) > 0)
                throw new AlreadyExistsException($"service \"{service.Id}\" already exists");
            ThrowIfIdentityTaken(w, identity, service, exceptId: null);
            w.Execute("INSERT INTO services (id, identity, record, version) VALUES ($id, $identity, $record, $rev)",
                ("$id", service.Id), ("$identity", identity), ("$record", service.ToByteArray()), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServiceKey(service.Id));
        }, ct);
    }

    public Task<Versioned<VirtualService>?> GetServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        return ReadAsync(c =>
        {
            using var cmd = Command(c, "SELECT record, version FROM services WHERE id = $id", ("$id", id));
            using var r = cmd.ExecuteReader();
            return r.Read() ? new Versioned<VirtualService>(ParseService(r, 0, ServiceKey(id)), r.GetInt64(1)) : null;
        }, ct);
    }

    public Task UpdateServiceAsync(VirtualService service, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(service);
        var identity = IdentityOrNull(service);
        return WriteAsync(w =>
        {
            var current = w.Scalar<long?>("SELECT version FROM services WHERE id = $id", ("$id", service.Id))
                ?? throw new NotFoundException($"service \"{service.Id}\" not found");
            if (current != expectedVersion)
                throw new ConflictException($"service \"{service.Id}\" changed since version {expectedVersion} (now {current}); re-read and retry");
            ThrowIfIdentityTaken(w, identity, service, exceptId: service.Id);
            w.Execute("UPDATE services SET identity = $identity, record = $record, version = $rev WHERE id = $id",
                ("$id", service.Id), ("$identity", identity), ("$record", service.ToByteArray()), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServiceKey(service.Id));
        }, ct);
    }

    public Task DeleteServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        return WriteAsync(w =>
        {
            if (w.Scalar<long>("SELECT COUNT(*) FROM services WHERE id = $id", ("$id", id)) == 0)
                throw new NotFoundException($"service \"{id}\" not found");
            var endpoints = new List<string>();
            using (var cmd = w.Command("SELECT endpoint FROM servers WHERE service_id = $id ORDER BY endpoint", ("$id", id)))
            using (var r = cmd.ExecuteReader())
                while (r.Read()) endpoints.Add(r.GetString(0));
            w.Execute("DELETE FROM servers WHERE service_id = $id", ("$id", id));
            w.Execute("DELETE FROM services WHERE id = $id", ("$id", id));
            w.Changed(StoreChangeKind.Delete, ServiceKey(id));
            foreach (var ep in endpoints) w.Changed(StoreChangeKind.Delete, ServerKey(id, ep));
        }, ct);
    }

    // ---------------------------------------------------------------- servers

    public Task CreateServerAsync(RealServer server, CancellationToken ct = default)
    {
        var endpoint = Endpoint(server);
        return WriteAsync(w =>
        {
            if (w.Scalar<long>("SELECT COUNT(*) FROM services WHERE id = $id", ("$id", server.ServiceID)) == 0)
                throw new NotFoundException($"service \"{server.ServiceID}\" not found");
            if (w.Scalar<long>("SELECT COUNT(*) FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", server.ServiceID), ("$ep", endpoint)) > 0)
                throw new AlreadyExistsException($"server {endpoint} already exists in service \"{server.ServiceID}\"");
            w.Execute("INSERT INTO servers (service_id, endpoint, record, version) VALUES ($id, $ep, $record, $rev)",
                ("$id", server.ServiceID), ("$ep", endpoint), ("$record", server.ToByteArray()), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServerKey(server.ServiceID, endpoint));
        }, ct);
    }

    public Task<Versioned<RealServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var endpoint = $"{ip}:{port}";
        return ReadAsync(c =>
        {
            using var cmd = Command(c, "SELECT record, version FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", serviceId), ("$ep", endpoint));
            using var r = cmd.ExecuteReader();
            return r.Read() ? new Versioned<RealServer>(ParseServer(r, 0, ServerKey(serviceId, endpoint)), r.GetInt64(1)) : null;
        }, ct);
    }

    public Task UpdateServerAsync(RealServer server, long expectedVersion, CancellationToken ct = default)
    {
        var endpoint = Endpoint(server);
        return WriteAsync(w =>
        {
            var current = w.Scalar<long?>("SELECT version FROM servers WHERE service_id = $id AND endpoint = $ep", ("$id", server.ServiceID), ("$ep", endpoint))
                ?? throw new NotFoundException($"server {endpoint} not found in service \"{server.ServiceID}\"");
            if (current != expectedVersion)
                throw new ConflictException($"server {endpoint} of service \"{server.ServiceID}\" changed since version {expectedVersion} (now {current}); re-read and retry");
            w.Execute("UPDATE servers SET record = $record, version = $rev WHERE service_id = $id AND endpoint = $ep",
                ("$id", server.ServiceID), ("$ep", endpoint), ("$record", server.ToByteArray()), ("$rev", w.Revision));
            w.Changed(StoreChangeKind.Put, ServerKey(server.ServiceID, endpoint));
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
        }, ct);
    }

    // ---------------------------------------------------------------- list and watch

    public Task<StoreSnapshot> ListAsync(CancellationToken ct = default) => ReadAsync(c =>
    {
        using var tx = c.BeginTransaction(deferred: true);
        var revision = ReadMeta(c, tx, "revision");
        var services = new List<VirtualService>();
        var servers = new Dictionary<string, List<RealServer>>(StringComparer.Ordinal);
        using (var cmd = Command(c, "SELECT id, record FROM services ORDER BY id"))
        {
            cmd.Transaction = tx;
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                var id = r.GetString(0);
                services.Add(ParseService(r, 1, ServiceKey(id)));
                servers[id] = [];
            }
        }
        using (var cmd = Command(c, "SELECT service_id, endpoint, record FROM servers ORDER BY service_id, endpoint"))
        {
            cmd.Transaction = tx;
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                var id = r.GetString(0);
                if (servers.TryGetValue(id, out var list)) list.Add(ParseServer(r, 2, ServerKey(id, r.GetString(1))));
            }
        }
        tx.Commit();
        var items = services.Select(s => new StoreItem(s, servers[s.Id])).ToList();
        return new StoreSnapshot(items, revision);
    }, ct);

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
    public async Task CompactHistoryAsync(long throughRevision, CancellationToken ct = default)
    {
        await _writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ThrowIfClosed(ct);
            using var tx = _writer.BeginTransaction(deferred: false);
            var current = ReadMeta(_writer, tx, "revision");
            Trim(_writer, tx, Math.Min(throughRevision, current));
            tx.Commit();
        }
        catch (SqliteException e)
        {
            throw Unavailable(e);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        _closed.Cancel();
        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            _writer.Dispose();
            SqliteConnection.ClearPool(new SqliteConnection(_connectionString));
        }
        finally
        {
            _writeLock.Release();
        }
    }

    // ---------------------------------------------------------------- plumbing

    private sealed record ChangeBatch(bool Resync, long Current, List<StoreChange> Changes);

    private static ChangeBatch ReadChanges(SqliteConnection c, long after)
    {
        using var tx = c.BeginTransaction(deferred: true);
        var current = ReadMeta(c, tx, "revision");
        var compacted = ReadMeta(c, tx, "compacted");
        if (after < compacted || after > current) return new ChangeBatch(true, current, []);
        var changes = new List<StoreChange>();
        using var cmd = Command(c, "SELECT revision, kind, key FROM changes WHERE revision > $after AND revision <= $upto ORDER BY revision, seq",
            ("$after", after), ("$upto", after + WatchBatchRevisions));
        cmd.Transaction = tx;
        using (var r = cmd.ExecuteReader())
            while (r.Read()) changes.Add(new StoreChange((StoreChangeKind)r.GetInt32(1), r.GetString(2), r.GetInt64(0)));
        tx.Commit();
        return new ChangeBatch(false, current, changes);
    }

    /// <summary>One write transaction: the revision it will commit at, and the changes it made.</summary>
    private sealed class Writer(SqliteConnection connection, SqliteTransaction transaction, long revision)
    {
        public long Revision { get; } = revision;
        public List<(StoreChangeKind Kind, string Key)> Changes { get; } = [];

        public void Changed(StoreChangeKind kind, string key) => Changes.Add((kind, key));

        public SqliteCommand Command(string sql, params (string Name, object? Value)[] args)
        {
            var cmd = SqliteStore.Command(connection, sql, args);
            cmd.Transaction = transaction;
            return cmd;
        }

        public int Execute(string sql, params (string Name, object? Value)[] args)
        {
            using var cmd = Command(sql, args);
            return cmd.ExecuteNonQuery();
        }

        public T Scalar<T>(string sql, params (string Name, object? Value)[] args)
        {
            using var cmd = Command(sql, args);
            var v = cmd.ExecuteScalar();
            if (v is null or DBNull) return default!;
            var t = Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T);
            return (T)Convert.ChangeType(v, t, System.Globalization.CultureInfo.InvariantCulture);
        }
    }

    private async Task WriteAsync(Action<Writer> body, CancellationToken ct)
    {
        await _writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ThrowIfClosed(ct);
            using (var tx = _writer.BeginTransaction(deferred: false))
            {
                var revision = ReadMeta(_writer, tx, "revision") + 1;
                var w = new Writer(_writer, tx, revision);
                body(w);
                w.Execute("UPDATE meta SET value = $rev WHERE key = 'revision'", ("$rev", revision));
                foreach (var (kind, key) in w.Changes)
                    w.Execute("INSERT INTO changes (revision, kind, key) VALUES ($rev, $kind, $key)", ("$rev", revision), ("$kind", (int)kind), ("$key", key));
                Trim(_writer, tx, revision - _options.HistoryRevisions);
                tx.Commit();
            }
            Interlocked.Exchange(ref _changed, NewSignal()).TrySetResult();
        }
        catch (SqliteException e) when (e.SqliteErrorCode == SqliteConstraint)
        {
            throw new AlreadyExistsException($"the record conflicts with an existing one: {e.Message}");
        }
        catch (SqliteException e)
        {
            throw Unavailable(e);
        }
        finally
        {
            _writeLock.Release();
        }
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
        var schema = ReadMeta(c, tx, "schema");
        if (schema != SchemaVersion)
            throw new StoreUnavailableException($"sqlite store {_path}: schema version {schema} is not supported (this build reads {SchemaVersion})");
        tx.Commit();
    }

    private static void Trim(SqliteConnection c, SqliteTransaction tx, long through)
    {
        if (through <= ReadMeta(c, tx, "compacted")) return;
        using var del = Command(c, "DELETE FROM changes WHERE revision <= $through; UPDATE meta SET value = $through WHERE key = 'compacted';", ("$through", through));
        del.Transaction = tx;
        del.ExecuteNonQuery();
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
        var identity = StoreKeys.ServiceIdentity(service);
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

    private VirtualService ParseService(SqliteDataReader r, int column, string key)
    {
        try
        {
            return VirtualService.Parser.ParseFrom((byte[])r.GetValue(column));
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: record {key} is not a valid types.VirtualService: {e.Message}", e);
        }
    }

    private RealServer ParseServer(SqliteDataReader r, int column, string key)
    {
        try
        {
            return RealServer.Parser.ParseFrom((byte[])r.GetValue(column));
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new StoreUnavailableException($"sqlite store {_path}: record {key} is not a valid types.RealServer: {e.Message}", e);
        }
    }

    private StoreUnavailableException Unavailable(SqliteException e) =>
        new($"sqlite store {_path} is unavailable: {e.Message}", e);

    private void ThrowIfClosed(CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (Volatile.Read(ref _disposed) == 1) throw new StoreUnavailableException($"sqlite store {_path} is closed");
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
