using System.Diagnostics;
using System.Net.Http;
using System.Runtime.CompilerServices;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using Merlin.Store.Protobuf;
using Merlin.Wire;
using Microsoft.Extensions.DependencyInjection;
using CompareResult = Etcdserverpb.Compare.Types.CompareResult;
using CompareTarget = Etcdserverpb.Compare.Types.CompareTarget;

namespace Merlin.Store.Etcd;

/// <summary>
/// The etcd v3 store, compatible with the original merlin: keys <c>&lt;prefix&gt;/services/&lt;id&gt;</c> and
/// <c>&lt;prefix&gt;/servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c>, values the protobuf bytes of
/// types.VirtualService / types.RealServer. Every write is one etcd transaction; a record's version is its
/// key's mod_revision. Two services may not share a key (ip:port:protocol or fwmark): a create reads the
/// services and commits only if none of them changed since (compare on the whole range), retrying on a race.
/// Every transport failure surfaces as <see cref="StoreUnavailableException"/>, and every call is bounded by
/// <see cref="EtcdStoreOptions.Timeout"/>.
/// </summary>
public sealed class EtcdStore : IStore
{
    private const int MaxServiceWriteAttempts = 10;
    private const string KeyIndexDirectory = "service-keys/";

    private readonly EtcdStoreOptions _options;
    private readonly string _prefix;
    private readonly string _endpointsText;
    private readonly GrpcChannel _channel;
    private readonly EtcdClient _client;
    private readonly Watch.WatchClient _watchClient;
    private readonly ByteString _allKey, _allEnd, _servicesKey, _servicesEnd;
    private readonly CancellationTokenSource _closed = new();

    // The services' keys (key identity ↔ id) as last read, incrementally; used only under _serviceWrites. A create
    // holds it only for the read; its transaction compares one index entry (StoreKeys.ServiceKeyIndex).
    private readonly SemaphoreSlim _serviceWrites = new(1, 1);
    private readonly Dictionary<string, string> _identityOf = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _holderOf = new(StringComparer.Ordinal);
    private long _identityRevision;
    private long _identityReadStarted; // Stopwatch timestamp: when the last read of the services began
    private int _disposed;

    public EtcdStore(EtcdStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Endpoints is null || options.Endpoints.Count == 0) throw new ArgumentException("at least one etcd endpoint is needed", nameof(options));
        if (options.Timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(options), "Timeout must be positive");
        if (options.PageSize < 1) throw new ArgumentOutOfRangeException(nameof(options), "PageSize must be positive");
        _options = options;
        _prefix = StoreKeys.NormalizePrefix(options.Prefix);
        var endpoints = options.Endpoints
            .SelectMany(e => (e ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            .Select(ParseEndpoint)
            .ToArray();
        if (endpoints.Length == 0) throw new ArgumentException("at least one etcd endpoint is needed", nameof(options));
        _endpointsText = string.Join(", ", endpoints.Select(u => u.GetLeftPart(UriPartial.Authority)));
        _channel = CreateChannel(endpoints, options.Timeout);
        var invoker = _channel.CreateCallInvoker();
        _client = new EtcdClient(invoker);
        _watchClient = new Watch.WatchClient(invoker);

        _allKey = Key(_prefix + "/");
        _allEnd = PrefixEnd(_allKey);
        _servicesKey = Key(StoreKeys.ServicesPrefix(_prefix));
        _servicesEnd = PrefixEnd(_servicesKey);
    }

    public EtcdStore(IEnumerable<string> endpoints, string prefix = "/merlin", TimeSpan? timeout = null)
        : this(new EtcdStoreOptions { Endpoints = endpoints.ToArray(), Prefix = prefix, Timeout = timeout ?? TimeSpan.FromSeconds(5) })
    {
    }

    public string Backend => "etcd3";

    /// <summary>The normalized key prefix (no trailing slash), e.g. <c>/merlin</c>.</summary>
    public string Prefix => _prefix;

    /// <summary>The endpoints in use (comma-separated lists in <see cref="EtcdStoreOptions.Endpoints"/> are split), for messages.</summary>
    public string Endpoints => _endpointsText;

    // ---------------------------------------------------------------- services

    public async Task CreateServiceAsync(StoredService stored, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        var key = Key(StoreKeys.Service(_prefix, service.Id));
        using var op = Begin(ct);
        // Services a Go merlin wrote have no index entry: the services as read since this call began must not
        // hold the key. Concurrent creates share one read of them (see CheckKeyFreeForCreate).
        if (identity is not null) await CheckKeyFreeForCreate(identity, service, Stopwatch.GetTimestamp(), op).ConfigureAwait(false);
        var index = identity is null ? null : Key(StoreKeys.ServiceKeyIndex(_prefix, identity));
        long indexVersion = 0; // the index entry this create replaces: none, or a stale one
        for (var attempt = 1; ; attempt++)
        {
            // Uniqueness is one compare on the index entry, so creates of other keys never invalidate each other.
            var txn = new TxnRequest();
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 });
            if (index is not null) txn.Compare.Add(new Compare { Key = index, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = indexVersion });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = service.ToByteString() } });
            if (index is not null) txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = index, Value = ByteString.CopyFromUtf8(service.Id) } });
            // A Go merlin's `service del` leaves the servers behind; a new service of that id must not inherit them.
            var servers = Key(StoreKeys.ServersOf(_prefix, service.Id));
            txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = servers, RangeEnd = PrefixEnd(servers) } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, CountOnly = true } });
            if (index is not null) txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = index } });
            var resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded) return;
            if (resp.Responses[0].ResponseRange.Count > 0)
                throw new AlreadyExistsException($"service \"{service.Id}\" already exists");
            var entry = index is null ? null : resp.Responses[1].ResponseRange.Kvs.FirstOrDefault();
            if (entry is not null && entry.ModRevision != indexVersion)
            {
                // The entry names a holder. It is stale if a Go merlin deleted that service or gave it another key:
                // then this create takes the entry over (compared on its version, so one racer wins).
                var holder = entry.Value.ToStringUtf8();
                var held = await Range(new RangeRequest { Key = Key(StoreKeys.Service(_prefix, holder)) }, op).ConfigureAwait(false);
                if (held.Kvs.Count > 0 && StoredRecords.Identity(Parse(VirtualService.Parser, held.Kvs[0].Value, StoreKeys.Service(_prefix, holder))) == identity)
                    throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holder}\"");
                indexVersion = entry.ModRevision;
                if (attempt == 1) continue;
            }
            else
            {
                indexVersion = entry?.ModRevision ?? 0;
            }
            await Backoff(attempt, $"service \"{service.Id}\"", op).ConfigureAwait(false);
        }
    }

    public async Task<Versioned<StoredService>?> GetServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        using var op = Begin(ct);
        var keyText = StoreKeys.Service(_prefix, id);
        var resp = await Range(new RangeRequest { Key = Key(keyText) }, op).ConfigureAwait(false);
        if (resp.Kvs.Count == 0) return null;
        return new Versioned<StoredService>(StoredRecords.Of(Parse(VirtualService.Parser, resp.Kvs[0].Value, keyText)), resp.Kvs[0].ModRevision);
    }

    public async Task UpdateServiceAsync(StoredService stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        var key = Key(StoreKeys.Service(_prefix, service.Id));
        using var op = Begin(ct);
        await Lock(_serviceWrites, op).ConfigureAwait(false);
        try
        {
            for (var attempt = 1; ; attempt++)
            {
                var readRevision = await CheckIdentityFree(identity, service, exceptId: service.Id, op).ConfigureAwait(false);
                var txn = new TxnRequest();
                txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
                txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = expectedVersion });
                if (identity is not null) txn.Compare.Add(ServicesUnchangedSince(readRevision));
                txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = service.ToByteString() } });
                // The range compare proved no other service holds the key: (re)write its index entry, which also
                // repairs one a Go merlin's writes left missing, and drop the entry of a key the service gave up.
                if (identity is not null) txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = Key(StoreKeys.ServiceKeyIndex(_prefix, identity)), Value = ByteString.CopyFromUtf8(service.Id) } });
                if (_identityOf.TryGetValue(service.Id, out var previous) && previous != identity)
                    txn.Success.Add(DeleteIndexEntryOf(previous, service.Id));
                txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
                // A changed table guard (a server written meanwhile) shows as the same version below: retried.
                await AddTableAsync(txn, service.Id, service, servers => servers, op).ConfigureAwait(false);
                var resp = await Txn(txn, op).ConfigureAwait(false);
                if (resp.Succeeded) return;
                var kvs = resp.Responses[0].ResponseRange.Kvs;
                if (kvs.Count == 0) throw new NotFoundException($"service \"{service.Id}\" not found");
                if (kvs[0].ModRevision != expectedVersion)
                    throw new ConflictException($"service \"{service.Id}\" changed since version {expectedVersion} (now {kvs[0].ModRevision}); re-read and retry");
                await Backoff(attempt, $"service \"{service.Id}\"", op).ConfigureAwait(false);
            }
        }
        finally
        {
            _serviceWrites.Release();
        }
    }

    public async Task DeleteServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        var key = Key(StoreKeys.Service(_prefix, id));
        var servers = Key(StoreKeys.ServersOf(_prefix, id));
        using var op = Begin(ct);
        // The key it holds: the index entry goes with it (a stale entry would only cost the next create a read).
        var held = await Range(new RangeRequest { Key = key }, op).ConfigureAwait(false);
        var txn = new TxnRequest();
        txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
        txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = key } });
        txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = servers, RangeEnd = PrefixEnd(servers) } });
        txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = Key(StoreKeys.Table(_prefix, id)) } });
        if (held.Kvs.Count > 0 && IdentityOrNull(Parse(VirtualService.Parser, held.Kvs[0].Value, StoreKeys.Service(_prefix, id))) is { } identity)
            txn.Success.Add(DeleteIndexEntryOf(identity, id));
        var resp = await Txn(txn, op).ConfigureAwait(false);
        if (!resp.Succeeded) throw new NotFoundException($"service \"{id}\" not found");
    }

    // ---------------------------------------------------------------- servers

    public async Task CreateServerAsync(StoredServer stored, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var server = StoredRecords.Message(stored);
        var (keyText, endpoint) = ServerKey(server);
        var service = Key(StoreKeys.Service(_prefix, server.ServiceID));
        var key = Key(keyText);
        using var op = Begin(ct);
        TxnResponse resp;
        for (var attempt = 1; ; attempt++)
        {
            var txn = new TxnRequest();
            txn.Compare.Add(new Compare { Key = service, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = server.ToByteString() } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = service, CountOnly = true } });
            var guard = await AddTableAsync(txn, server.ServiceID, null, servers => [.. servers.Where(s => Endpoint(s) != endpoint), server], op).ConfigureAwait(false);
            resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded) return;
            if (guard is null || !guard.Broken(resp)) break;
            await Backoff(attempt, $"table of service \"{server.ServiceID}\"", op).ConfigureAwait(false);
        }
        if (resp.Responses[0].ResponseRange.Count == 0) throw new NotFoundException($"service \"{server.ServiceID}\" not found");
        throw new AlreadyExistsException($"server {endpoint} already exists in service \"{server.ServiceID}\"");
    }

    public async Task<Versioned<StoredServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var keyText = StoreKeys.Server(_prefix, serviceId, ip, port);
        using var op = Begin(ct);
        var resp = await Range(new RangeRequest { Key = Key(keyText) }, op).ConfigureAwait(false);
        if (resp.Kvs.Count == 0) return null;
        return new Versioned<StoredServer>(StoredRecords.Of(Parse(RealServer.Parser, resp.Kvs[0].Value, keyText)), resp.Kvs[0].ModRevision);
    }

    public async Task UpdateServerAsync(StoredServer stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var server = StoredRecords.Message(stored);
        var (keyText, endpoint) = ServerKey(server);
        var key = Key(keyText);
        using var op = Begin(ct);
        TxnResponse resp;
        for (var attempt = 1; ; attempt++)
        {
            var txn = new TxnRequest();
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = expectedVersion });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = server.ToByteString() } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
            var guard = await AddTableAsync(txn, server.ServiceID, null, servers => [.. servers.Where(s => Endpoint(s) != endpoint), server], op).ConfigureAwait(false);
            resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded) return;
            if (guard is null || !guard.Broken(resp)) break;
            await Backoff(attempt, $"table of service \"{server.ServiceID}\"", op).ConfigureAwait(false);
        }
        var kvs = resp.Responses[0].ResponseRange.Kvs;
        if (kvs.Count == 0) throw new NotFoundException($"server {endpoint} not found in service \"{server.ServiceID}\"");
        throw new ConflictException($"server {endpoint} of service \"{server.ServiceID}\" changed since version {expectedVersion} (now {kvs[0].ModRevision}); re-read and retry");
    }

    public Task DeleteServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default) =>
        DeleteServerAsync(serviceId, ip, port, expectedVersion: null, ct);

    public Task DeleteServerAsync(string serviceId, string ip, uint port, long expectedVersion, CancellationToken ct = default) =>
        DeleteServerAsync(serviceId, ip, port, (long?)expectedVersion, ct);

    /// <summary>Deletes a server that exists, and with <paramref name="expectedVersion"/> only that version of it.</summary>
    private async Task DeleteServerAsync(string serviceId, string ip, uint port, long? expectedVersion, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        var key = Key(StoreKeys.Server(_prefix, serviceId, ip, port));
        using var op = Begin(ct);
        var endpoint = $"{ip}:{port}";
        TxnResponse resp;
        for (var attempt = 1; ; attempt++)
        {
            var txn = new TxnRequest();
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            if (expectedVersion is { } version)
                txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = version });
            txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = key } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
            var guard = await AddTableAsync(txn, serviceId, null, servers => [.. servers.Where(s => Endpoint(s) != endpoint)], op).ConfigureAwait(false);
            resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded) return;
            if (guard is null || !guard.Broken(resp)) break;
            await Backoff(attempt, $"table of service \"{serviceId}\"", op).ConfigureAwait(false);
        }
        var kvs = resp.Responses[0].ResponseRange.Kvs;
        if (kvs.Count == 0) throw new NotFoundException($"server {ip}:{port} not found in service \"{serviceId}\"");
        throw new ConflictException($"server {ip}:{port} of service \"{serviceId}\" changed since version {expectedVersion} (now {kvs[0].ModRevision}); re-read and retry");
    }

    // ---------------------------------------------------------------- lookup tables

    /// <summary>
    /// What a write's table depends on, as read: the revision of the read, and the service's and the
    /// table's mod revisions (0: absent). <see cref="At"/> is where its reads start in the failure responses.
    /// </summary>
    private sealed record TableGuard(long Revision, long ServiceMod, long TableMod, int At)
    {
        /// <summary>Whether the transaction failed because what the table was computed from changed (then retry).</summary>
        public bool Broken(TxnResponse resp)
        {
            static long Mod(TxnResponse r, int i) => r.Responses[i].ResponseRange.Kvs is { Count: > 0 } kvs ? kvs[0].ModRevision : 0;
            return Mod(resp, At) != ServiceMod || Mod(resp, At + 1) > Revision || Mod(resp, At + 2) != TableMod;
        }
    }

    /// <summary>
    /// Adds to <paramref name="txn"/> the service's table as <see cref="EtcdStoreOptions.DeriveTable"/> computes
    /// it after this write (its servers as read, changed by <paramref name="apply"/>; its record replaced by
    /// <paramref name="newService"/> if given), and compares that hold only if nothing it was computed from
    /// changed: the service, every server of it (no mod revision after the read), the table. Null (nothing
    /// added) without a deriver or when the service is gone (the write itself then fails).
    /// </summary>
    private async Task<TableGuard?> AddTableAsync(TxnRequest txn, string serviceId, VirtualService? newService,
        Func<List<RealServer>, List<RealServer>> apply, Operation op)
    {
        if (_options.DeriveTable is not { } derive) return null;
        var serviceText = StoreKeys.Service(_prefix, serviceId);
        var serviceKey = Key(serviceText);
        var serversKey = Key(StoreKeys.ServersOf(_prefix, serviceId));
        var tableKey = Key(StoreKeys.Table(_prefix, serviceId));
        var read = new TxnRequest();
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = serviceKey } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = serversKey, RangeEnd = PrefixEnd(serversKey) } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = tableKey } });
        var resp = await Txn(read, op).ConfigureAwait(false);
        var serviceKvs = resp.Responses[0].ResponseRange.Kvs;
        if (serviceKvs.Count == 0) return null;
        var service = newService ?? Parse(VirtualService.Parser, serviceKvs[0].Value, serviceText);
        var servers = apply([.. resp.Responses[1].ResponseRange.Kvs.Select(kv => Parse(RealServer.Parser, kv.Value, kv.Key.ToStringUtf8()))]);
        servers.Sort((a, b) => string.CompareOrdinal(Endpoint(a), Endpoint(b)));   // as SQLite hands them over: by endpoint
        var tableKvs = resp.Responses[2].ResponseRange.Kvs;
        var previous = tableKvs.Count > 0 ? tableKvs[0].Value.ToByteArray() : null;
        var next = derive(StoredRecords.Of(service), servers.ConvertAll(StoredRecords.Of), previous);

        long revision = resp.Header.Revision, serviceMod = serviceKvs[0].ModRevision, tableMod = tableKvs.Count > 0 ? tableKvs[0].ModRevision : 0;
        txn.Compare.Add(new Compare { Key = serviceKey, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = serviceMod });
        txn.Compare.Add(new Compare { Key = serversKey, RangeEnd = PrefixEnd(serversKey), Target = CompareTarget.Mod, Result = CompareResult.Less, ModRevision = revision + 1 });
        txn.Compare.Add(tableMod == 0
            ? new Compare { Key = tableKey, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 }
            : new Compare { Key = tableKey, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = tableMod });
        if (next is null)
        {
            if (previous is not null) txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = tableKey } });
        }
        else if (previous is null || !previous.AsSpan().SequenceEqual(next))
        {
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = tableKey, Value = ByteString.CopyFrom(next) } });
        }
        int at = txn.Failure.Count;
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = serviceKey, KeysOnly = true } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest
        {
            Key = serversKey, RangeEnd = PrefixEnd(serversKey), KeysOnly = true, Limit = 1,
            SortTarget = RangeRequest.Types.SortTarget.Mod, SortOrder = RangeRequest.Types.SortOrder.Descend,
        } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = tableKey, KeysOnly = true } });
        return new TableGuard(revision, serviceMod, tableMod, at);
    }

    private static string Endpoint(RealServer server) => $"{server.Key?.Ip}:{server.Key?.Port}";

    // ---------------------------------------------------------------- list and watch

    public async Task<long> GetRevisionAsync(CancellationToken ct = default)
    {
        using var op = Begin(ct);
        var resp = await Range(new RangeRequest { Key = _allKey, RangeEnd = _allEnd, CountOnly = true }, op).ConfigureAwait(false);
        return resp.Header.Revision;
    }

    /// <summary>Everything under the prefix, read page by page at one revision, so the snapshot is consistent.</summary>
    public async Task<StoreSnapshot> ListAsync(CancellationToken ct = default)
    {
        using var op = Begin(ct);
        var (kvs, revision) = await ReadAll(_allKey, _allEnd, op).ConfigureAwait(false);
        var services = new List<StoredService>();
        var servers = new Dictionary<string, List<StoredServer>>(StringComparer.Ordinal);
        var servicesPrefix = StoreKeys.ServicesPrefix(_prefix);
        var serversPrefix = StoreKeys.ServersPrefix(_prefix);
        var tablesPrefix = StoreKeys.TablesPrefix(_prefix);
        var tables = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var kv in kvs)
        {
            var key = kv.Key.ToStringUtf8();
            if (key.StartsWith(servicesPrefix, StringComparison.Ordinal))
            {
                services.Add(StoredRecords.Of(Parse(VirtualService.Parser, kv.Value, key)));
            }
            else if (key.StartsWith(tablesPrefix, StringComparison.Ordinal))
            {
                tables[key[tablesPrefix.Length..]] = kv.Value.ToByteArray();
            }
            else if (key.StartsWith(serversPrefix, StringComparison.Ordinal))
            {
                var rest = key.AsSpan(serversPrefix.Length);
                var slash = rest.IndexOf('/');
                if (slash <= 0) continue;
                var serviceId = rest[..slash].ToString();
                if (!servers.TryGetValue(serviceId, out var list)) servers[serviceId] = list = [];
                list.Add(StoredRecords.Of(Parse(RealServer.Parser, kv.Value, key)));
            }
        }
        var items = new List<StoreItem>(services.Count);
        var ids = new HashSet<string>(services.Count, StringComparer.Ordinal);
        foreach (var s in services)
        {
            ids.Add(s.Id);
            items.Add(new StoreItem(s, servers.TryGetValue(s.Id, out var list) ? list : []) { Table = tables.GetValueOrDefault(s.Id) });
        }
        // The range read brought them anyway: counting them costs nothing, and tells of a Go merlin's service del.
        var orphans = new List<OrphanedServer>();
        if (servers.Keys.Any(id => !ids.Contains(id)))
        {
            // Rare (a Go merlin's service del): walk the read again for their keys' endpoints.
            foreach (var kv in kvs)
            {
                var key = kv.Key.ToStringUtf8();
                if (!key.StartsWith(serversPrefix, StringComparison.Ordinal)) continue;
                var rest = key.AsSpan(serversPrefix.Length);
                var slash = rest.IndexOf('/');
                if (slash <= 0) continue;
                var serviceId = rest[..slash].ToString();
                if (!ids.Contains(serviceId)) orphans.Add(new OrphanedServer(serviceId, rest[(slash + 1)..].ToString(), StoredRecords.Of(Parse(RealServer.Parser, kv.Value, key))));
            }
        }
        return new StoreSnapshot(items, revision) { OrphanedServers = orphans.Count, Orphans = orphans };
    }

    /// <summary>One service, its servers (by endpoint, as SQLite orders them) and its table, in one transaction of three range reads.</summary>
    public async Task<StoreItem?> GetItemAsync(string serviceId, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        using var op = Begin(ct);
        var serviceText = StoreKeys.Service(_prefix, serviceId);
        var serversKey = Key(StoreKeys.ServersOf(_prefix, serviceId));
        var read = new TxnRequest();
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = Key(serviceText) } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = serversKey, RangeEnd = PrefixEnd(serversKey) } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = Key(StoreKeys.Table(_prefix, serviceId)) } });
        var resp = await Txn(read, op).ConfigureAwait(false);
        var serviceKvs = resp.Responses[0].ResponseRange.Kvs;
        if (serviceKvs.Count == 0) return null;
        var service = StoredRecords.Of(Parse(VirtualService.Parser, serviceKvs[0].Value, serviceText));
        var servers = resp.Responses[1].ResponseRange.Kvs
            .Select(kv => (Key: kv.Key.ToStringUtf8(), kv.Value))
            .OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => StoredRecords.Of(Parse(RealServer.Parser, kv.Value, kv.Key)))
            .ToList();
        var tableKvs = resp.Responses[2].ResponseRange.Kvs;
        return new StoreItem(service, servers) { Table = tableKvs.Count > 0 ? tableKvs[0].Value.ToByteArray() : null };
    }

    /// <summary>
    /// Watches the prefix from <paramref name="afterRevision"/> + 1. If etcd compacted that history, one
    /// <see cref="StoreChangeKind.Resync"/> (carrying the compaction revision) is yielded and the watch ends.
    /// Keys are relative to the prefix (<c>services/web</c>). Losing etcd ends the watch with
    /// <see cref="StoreUnavailableException"/>.
    /// </summary>
    public async IAsyncEnumerable<StoreChange> WatchAsync(long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        using var startTimer = new CancellationTokenSource(_options.Timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _closed.Token, startTimer.Token);
        AsyncDuplexStreamingCall<WatchRequest, WatchResponse> call;
        try
        {
            call = _watchClient.Watch(cancellationToken: linked.Token);
        }
        catch (Exception e) when (e is RpcException or HttpRequestException or IOException or InvalidOperationException)
        {
            throw Unavailable("cannot start a watch", e);
        }
        using var _ = call;
        await WatchStep(async () =>
        {
            await call.RequestStream.WriteAsync(new WatchRequest
            {
                CreateRequest = new WatchCreateRequest
                {
                    Key = _allKey,
                    RangeEnd = _allEnd,
                    StartRevision = Math.Max(0, afterRevision) + 1,
                    ProgressNotify = true,
                },
            }, linked.Token).ConfigureAwait(false);
            return true;
        }, "start a watch", ct, startTimer).ConfigureAwait(false);

        var prefixLength = _prefix.Length + 1;
        var created = false;
        while (true)
        {
            var more = await WatchStep(() => call.ResponseStream.MoveNext(linked.Token), created ? "watch" : "start a watch", ct, startTimer).ConfigureAwait(false);
            if (!more) throw new StoreUnavailableException($"etcd at {_endpointsText} closed the watch stream");
            var resp = call.ResponseStream.Current;
            if (!created && resp.Created)
            {
                created = true;
                startTimer.CancelAfter(Timeout.InfiniteTimeSpan);
            }
            if (resp.CompactRevision > 0)
            {
                yield return new StoreChange(StoreChangeKind.Resync, "", resp.CompactRevision);
                yield break;
            }
            if (resp.Canceled)
                throw new StoreUnavailableException($"etcd at {_endpointsText} canceled the watch: {resp.CancelReason}");
            foreach (var ev in resp.Events)
            {
                var key = ev.Kv.Key.ToStringUtf8();
                var relative = key.Length > prefixLength ? key[prefixLength..] : key;
                if (relative.StartsWith(KeyIndexDirectory, StringComparison.Ordinal)) continue; // the store's own bookkeeping
                if (ev.Type == Mvccpb.Event.Types.EventType.Delete)
                {
                    yield return new StoreChange(StoreChangeKind.Delete, relative, ev.Kv.ModRevision);
                    continue;
                }
                // Decoded as a List decodes it: a record that is not protobuf fails the watch as it fails the List.
                var service = relative.StartsWith("services/", StringComparison.Ordinal) ? StoredRecords.Of(Parse(VirtualService.Parser, ev.Kv.Value, key)) : null;
                var server = relative.StartsWith("servers/", StringComparison.Ordinal) ? StoredRecords.Of(Parse(RealServer.Parser, ev.Kv.Value, key)) : null;
                var table = relative.StartsWith("tables/", StringComparison.Ordinal) ? ev.Kv.Value.ToByteArray() : null;
                yield return new StoreChange(StoreChangeKind.Put, relative, ev.Kv.ModRevision) { Service = service, Server = server, Table = table };
            }
        }
    }

    public async Task<StoredSettings> GetSettingsAsync(CancellationToken ct = default)
    {
        using var op = Begin(ct);
        var keyText = StoreKeys.Settings(_prefix);
        var resp = await Range(new RangeRequest { Key = Key(keyText) }, op).ConfigureAwait(false);
        return StoredRecords.Of(resp.Kvs.Count == 0 ? new Settings() : Parse(Settings.Parser, resp.Kvs[0].Value, keyText));
    }

    public async Task SetSettingsAsync(StoredSettings settings, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        using var op = Begin(ct);
        var txn = new TxnRequest();
        txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = Key(StoreKeys.Settings(_prefix)), Value = ByteString.CopyFrom(StoredRecords.Encode(settings)) } });
        await Txn(txn, op).ConfigureAwait(false);
    }

    /// <summary>Compacts etcd's history through <paramref name="revision"/> (an operator or test tool: watchers from before it get a Resync).</summary>
    public async Task CompactAsync(long revision, CancellationToken ct = default)
    {
        using var op = Begin(ct);
        await Call(() => _client.CompactAsync(new CompactionRequest { Revision = revision, Physical = true }, null, op.Deadline, op.Token), op).ConfigureAwait(false);
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return ValueTask.CompletedTask;
        _closed.Cancel();
        _client.Dispose();
        _channel.Dispose();
        return ValueTask.CompletedTask;
    }

    // ---------------------------------------------------------------- identity index

    /// <summary>
    /// Ensures no other service holds <paramref name="identity"/>; returns the revision the services were
    /// read at (the commit then requires the whole services range unchanged since).
    /// </summary>
    private async Task<long> CheckIdentityFree(string? identity, VirtualService service, string? exceptId, Operation op)
    {
        if (identity is null) return 0; // a service without a key conflicts with nothing
        var revision = await RefreshIdentities(full: _identityRevision == 0, op).ConfigureAwait(false);
        // An update that keeps its key takes nothing: a duplicate the Go merlin accepted must not block edits.
        if (exceptId is not null && _identityOf.TryGetValue(exceptId, out var own) && own == identity) return revision;
        if (!Taken()) return revision;
        // The index may still hold a service deleted since; confirm with a full read.
        revision = await RefreshIdentities(full: true, op).ConfigureAwait(false);
        if (Taken())
            throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{_holderOf[identity]}\"");
        return revision;

        bool Taken() => _holderOf.TryGetValue(identity, out var holder) && holder != exceptId;
    }

    /// <summary>
    /// The range check of a create, without holding up other creates for their transactions: the services are
    /// read again (incrementally) unless a read that began after <paramref name="arrived"/> already did, so one
    /// read serves every create that was waiting for it. A holder found is confirmed by a full read, and its
    /// missing index entry repaired.
    /// </summary>
    private async Task CheckKeyFreeForCreate(string identity, VirtualService service, long arrived, Operation op)
    {
        await Lock(_serviceWrites, op).ConfigureAwait(false);
        try
        {
            if (_identityReadStarted <= arrived) await RefreshIdentities(full: _identityRevision == 0, op).ConfigureAwait(false);
            if (!_holderOf.ContainsKey(identity)) return;
            await RefreshIdentities(full: true, op).ConfigureAwait(false); // it may have been deleted since
            if (!_holderOf.TryGetValue(identity, out var holder)) return;
            await RepairIndexEntry(identity, holder, op).ConfigureAwait(false);
            throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holder}\"");
        }
        finally
        {
            _serviceWrites.Release();
        }
    }

    /// <summary>Writes the index entry of a holder a Go merlin created (none yet), while that service still exists.</summary>
    private async Task RepairIndexEntry(string identity, string holder, Operation op)
    {
        var index = Key(StoreKeys.ServiceKeyIndex(_prefix, identity));
        var txn = new TxnRequest();
        txn.Compare.Add(new Compare { Key = index, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 });
        txn.Compare.Add(new Compare { Key = Key(StoreKeys.Service(_prefix, holder)), Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
        txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = index, Value = ByteString.CopyFromUtf8(holder) } });
        await Txn(txn, op).ConfigureAwait(false);
    }

    /// <summary>Deletes <paramref name="identity"/>'s index entry if (inside the transaction) it still names <paramref name="id"/>.</summary>
    private RequestOp DeleteIndexEntryOf(string identity, string id)
    {
        var index = Key(StoreKeys.ServiceKeyIndex(_prefix, identity));
        var nested = new TxnRequest();
        nested.Compare.Add(new Compare { Key = index, Target = CompareTarget.Value, Result = CompareResult.Equal, Value = ByteString.CopyFromUtf8(id) });
        nested.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = index } });
        return new RequestOp { RequestTxn = nested };
    }

    private async Task<long> RefreshIdentities(bool full, Operation op)
    {
        _identityReadStarted = Stopwatch.GetTimestamp();
        List<Mvccpb.KeyValue> kvs;
        long revision;
        if (full)
        {
            (kvs, revision) = await ReadAll(_servicesKey, _servicesEnd, op).ConfigureAwait(false);
            _identityOf.Clear();
            _holderOf.Clear();
        }
        else
        {
            var resp = await Range(new RangeRequest { Key = _servicesKey, RangeEnd = _servicesEnd, MinModRevision = _identityRevision + 1 }, op).ConfigureAwait(false);
            kvs = [.. resp.Kvs];
            revision = resp.Header.Revision;
        }
        var servicesPrefixLength = _servicesKey.Length;
        foreach (var kv in kvs)
        {
            var keyText = kv.Key.ToStringUtf8();
            var id = keyText[servicesPrefixLength..];
            if (_identityOf.Remove(id, out var old) && _holderOf.TryGetValue(old, out var h) && h == id) _holderOf.Remove(old);
            var identity = StoredRecords.Identity(Parse(VirtualService.Parser, kv.Value, keyText));
            if (identity.Length == 0) continue;
            _identityOf[id] = identity;
            _holderOf[identity] = id;
        }
        _identityRevision = revision;
        return revision;
    }

    private Compare ServicesUnchangedSince(long revision) => new()
    {
        Key = _servicesKey,
        RangeEnd = _servicesEnd,
        Target = CompareTarget.Mod,
        Result = CompareResult.Less,
        ModRevision = revision + 1,
    };

    private static async Task Backoff(int attempt, string what, Operation op)
    {
        if (attempt >= MaxServiceWriteAttempts)
            throw new ConflictException($"{what}: other services kept changing during {attempt} attempts; retry");
        try
        {
            await Task.Delay(Random.Shared.Next(1, 5 * attempt), op.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            op.ThrowTimeoutOrCanceled();
        }
    }

    // ---------------------------------------------------------------- rpc plumbing

    private sealed class Operation(EtcdStore store, CancellationToken caller) : IDisposable
    {
        private readonly CancellationTokenSource _cts = CreateCts(store, caller);

        public DateTime Deadline { get; } = DateTime.UtcNow + store._options.Timeout;
        public CancellationToken Token => _cts.Token;
        public CancellationToken Caller => caller;

        private static CancellationTokenSource CreateCts(EtcdStore store, CancellationToken caller)
        {
            var cts = CancellationTokenSource.CreateLinkedTokenSource(caller, store._closed.Token);
            cts.CancelAfter(store._options.Timeout);
            return cts;
        }

        public void ThrowTimeoutOrCanceled()
        {
            caller.ThrowIfCancellationRequested();
            if (store._closed.IsCancellationRequested) throw new StoreUnavailableException($"etcd store ({store._endpointsText}) is closed");
            throw store.TimedOut(null);
        }

        public void Dispose() => _cts.Dispose();
    }

    private Operation Begin(CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (Volatile.Read(ref _disposed) == 1) throw new StoreUnavailableException($"etcd store ({_endpointsText}) is closed");
        return new Operation(this, ct);
    }

    private static async Task Lock(SemaphoreSlim gate, Operation op)
    {
        try
        {
            await gate.WaitAsync(op.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            op.ThrowTimeoutOrCanceled();
        }
    }

    private Task<TxnResponse> Txn(TxnRequest txn, Operation op) =>
        Call(() => _client.TransactionAsync(txn, null, op.Deadline, op.Token), op);

    private Task<RangeResponse> Range(RangeRequest req, Operation op) =>
        Call(() => _client.GetAsync(req, null, op.Deadline, op.Token), op);

    /// <summary>All keys in [key, end) at one revision, a page at a time; restarts if the revision is compacted meanwhile.</summary>
    private async Task<(List<Mvccpb.KeyValue> Kvs, long Revision)> ReadAll(ByteString key, ByteString end, Operation op)
    {
        for (var attempt = 1; ; attempt++)
        {
            var kvs = new List<Mvccpb.KeyValue>();
            long revision = 0;
            var from = key;
            try
            {
                while (true)
                {
                    var resp = await Range(new RangeRequest { Key = from, RangeEnd = end, Limit = _options.PageSize, Revision = revision }, op).ConfigureAwait(false);
                    if (revision == 0) revision = resp.Header.Revision;
                    kvs.AddRange(resp.Kvs);
                    if (!resp.More || resp.Kvs.Count == 0) return (kvs, revision);
                    from = ByteString.CopyFrom([.. resp.Kvs[^1].Key.Span, 0]);
                }
            }
            catch (StoreUnavailableException e) when (attempt < 3 && e.InnerException is RpcException { StatusCode: StatusCode.OutOfRange })
            {
                // "required revision has been compacted" between two pages: read again at a newer revision.
            }
        }
    }

    private async Task<T> Call<T>(Func<Task<T>> call, Operation op)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e) when (op.Caller.IsCancellationRequested)
        {
            throw new OperationCanceledException("the store call was canceled", e, op.Caller);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded || (e.StatusCode == StatusCode.Cancelled && op.Token.IsCancellationRequested))
        {
            if (_closed.IsCancellationRequested) throw new StoreUnavailableException($"etcd store ({_endpointsText}) is closed", e);
            throw TimedOut(e);
        }
        catch (RpcException e)
        {
            throw Unavailable(Detail(e), e);
        }
        catch (OperationCanceledException e) when (!op.Caller.IsCancellationRequested)
        {
            throw TimedOut(e);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or InvalidOperationException or ObjectDisposedException)
        {
            throw Unavailable(e.Message, e);
        }
    }

    private async Task<T> WatchStep<T>(Func<Task<T>> step, string what, CancellationToken caller, CancellationTokenSource startTimer)
    {
        try
        {
            return await step().ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && caller.IsCancellationRequested)
        {
            throw new OperationCanceledException("the watch was canceled", e, caller);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && _closed.IsCancellationRequested)
        {
            throw new StoreUnavailableException($"etcd store ({_endpointsText}) is closed", e);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && startTimer.IsCancellationRequested)
        {
            throw TimedOut(e, what);
        }
        catch (RpcException e)
        {
            throw Unavailable($"{what}: {Detail(e)}", e);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or InvalidOperationException or ObjectDisposedException)
        {
            throw Unavailable($"{what}: {e.Message}", e);
        }
    }

    private static string Detail(RpcException e) =>
        e.Status.DebugException is { } cause && !e.Status.Detail.Contains(cause.Message, StringComparison.Ordinal)
            ? $"{e.Status.Detail.TrimEnd('.')} ({cause.Message})"
            : e.Status.Detail;

    private StoreUnavailableException TimedOut(Exception? inner, string what = "the call") =>
        new($"etcd at {_endpointsText} did not answer {what} within {_options.Timeout.TotalSeconds:0.###} s", inner);

    private StoreUnavailableException Unavailable(string detail, Exception inner) =>
        new($"etcd at {_endpointsText} is unavailable: {detail}", inner);

    private static GrpcChannel CreateChannel(Uri[] endpoints, TimeSpan timeout)
    {
        var secure = endpoints[0].Scheme == Uri.UriSchemeHttps;
        if (endpoints.Any(u => (u.Scheme == Uri.UriSchemeHttps) != secure))
            throw new ArgumentException("etcd endpoints must all be http or all be https");
        var options = new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                ConnectTimeout = timeout,
                KeepAlivePingDelay = TimeSpan.FromSeconds(10),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
                KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
                PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            },
            DisposeHttpClient = true,
            MaxReceiveMessageSize = 512 * 1024 * 1024,
            MaxSendMessageSize = 16 * 1024 * 1024,
            Credentials = secure ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure,
            InitialReconnectBackoff = TimeSpan.FromMilliseconds(100),
            MaxReconnectBackoff = TimeSpan.FromSeconds(2),
        };
        if (endpoints.Length == 1) return GrpcChannel.ForAddress(endpoints[0], options);

        var addresses = endpoints.Select(u => new BalancerAddress(u.Host, u.Port)).ToArray();
        var services = new ServiceCollection();
        services.AddSingleton<ResolverFactory>(new StaticResolverFactory(_ => addresses));
        options.ServiceProvider = services.BuildServiceProvider();
        options.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
        return GrpcChannel.ForAddress("static:///etcd", options);
    }

    private static Uri ParseEndpoint(string endpoint)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(endpoint);
        var text = endpoint.Trim();
        if (!text.Contains("://", StringComparison.Ordinal)) text = "http://" + text;
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"etcd endpoint \"{endpoint}\" is not an http(s)://host:port URL");
        return uri;
    }

    // ---------------------------------------------------------------- keys and records

    private (string Key, string Endpoint) ServerKey(RealServer server)
    {
        ArgumentNullException.ThrowIfNull(server);
        if (server.Key is null) throw new ArgumentException("server has no key", nameof(server));
        return (StoreKeys.Server(_prefix, server.ServiceID, server.Key.Ip, server.Key.Port), $"{server.Key.Ip}:{server.Key.Port}");
    }

    private static ByteString Key(string key) => ByteString.CopyFromUtf8(key);

    /// <summary>The end of the range of keys starting with <paramref name="prefix"/>.</summary>
    internal static ByteString PrefixEnd(ByteString prefix)
    {
        var bytes = prefix.ToByteArray();
        for (var i = bytes.Length - 1; i >= 0; i--)
        {
            if (bytes[i] < 0xff)
            {
                bytes[i]++;
                return ByteString.CopyFrom(bytes, 0, i + 1);
            }
        }
        return ByteString.CopyFrom(0);
    }

    private T Parse<T>(MessageParser<T> parser, ByteString value, string key) where T : IMessage<T>
    {
        try
        {
            return parser.ParseFrom(value);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new StoreUnavailableException($"etcd at {_endpointsText}: record {key} is not a valid types.{typeof(T).Name}: {e.Message}", e);
        }
    }

    private static string? IdentityOrNull(VirtualService service)
    {
        var identity = StoredRecords.Identity(service);
        return identity.Length == 0 ? null : identity;
    }

    private static string Describe(VirtualService service)
    {
        var k = service.Key;
        if (k is null) return "(none)";
        if (k.Fwmark != 0) return $"fwmark {k.Fwmark}";
        var ip = k.Ip.Contains(':') ? $"[{k.Ip}]" : k.Ip;
        return $"{k.Protocol.ToString().ToLowerInvariant()} {ip}:{k.Port}";
    }
}
