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
using Backoff = Merlin.Model.Backoff;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Microsoft.Extensions.DependencyInjection;
using CompareResult = Etcdserverpb.Compare.Types.CompareResult;
using CompareTarget = Etcdserverpb.Compare.Types.CompareTarget;

namespace Merlin.Store.Etcd;

/// <summary>
/// The etcd v3 store, compatible with the original merlin: keys <c>&lt;prefix&gt;/services/&lt;id&gt;</c> and
/// <c>&lt;prefix&gt;/servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c>, values the protobuf bytes of
/// types.VirtualService / types.RealServer. Every write is one etcd transaction; a record's version is its
/// key's mod_revision. Two services may not share a key (ip:port:protocol or fwmark): a create compares one
/// index entry, and checks the services a Go merlin wrote (no entry) in a view a watch keeps (see
/// <see cref="CreateServiceAsync"/> for why that is enough).
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

    // The services' keys as a watch of the services range keeps them, followed from the first service write on.
    private readonly ServiceKeyView _view = new();
    private readonly Lock _followGate = new();
    private Task? _following;
    private CancellationTokenSource? _restartWatch;
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
        _channel = CreateChannel(endpoints, options.Timeout, options.ChannelLogging);
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

    /// <summary>
    /// Creates a service whose id and key are free. Merlin's own services carry an index entry per key
    /// (<see cref="StoreKeys.ServiceKeyIndex"/>), so uniqueness against them is one compare in the transaction.
    /// A Go merlin's services carry none; against those the create checks the view of the services range that
    /// a watch keeps (no read of the range, no compare on it: either made every create cost a scan of all
    /// services). The view is at some revision R when checked and the transaction commits at T; a Go merlin's
    /// service with this key written in (R, T) is invisible to both. So after the commit the create waits
    /// until the view has reached T (its own put is an event of the range, so it arrives) and looks again:
    /// if any other service holds the key by then, this one is undone (compared on its create revision, so
    /// only this incarnation) and the caller told <see cref="AlreadyExistsException"/>. Every service committed
    /// before T is in that second look, so no create ever leaves a duplicate of a service written before it.
    /// A Go merlin's blind write after that look can still duplicate it — its own check-then-write races
    /// every writer alike, which no transaction of ours can prevent.
    /// </summary>
    public async Task CreateServiceAsync(StoredService stored, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        var key = Key(StoreKeys.Service(_prefix, service.Id));
        using var op = Begin(ct);
        if (identity is not null) await RefuseKeyHeldInView(identity, service, op).ConfigureAwait(false);
        if (BeforeCreateTransaction is { } hook) await hook().ConfigureAwait(false);
        var index = identity is null ? null : Key(StoreKeys.ServiceKeyIndex(_prefix, identity));
        long indexVersion = 0; // the index entry this create replaces: none, or a stale one
        var backoff = ConflictBackoff();
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
            if (resp.Succeeded)
            {
                if (identity is not null) await UndoIfKeyTakenMeanwhile(identity, service, resp.Header.Revision, op).ConfigureAwait(false);
                return;
            }
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
            await Retry(backoff, attempt, $"service \"{service.Id}\"", op).ConfigureAwait(false);
        }
    }

    /// <summary>Tests only: the revision the view of the services has reached (0: not followed yet).</summary>
    internal long ViewRevision => _view.Revision;

    /// <summary>Tests only: runs between a create's check of the view and its transaction (to write into that window).</summary>
    internal Func<Task>? BeforeCreateTransaction { get; set; }

    public async Task<Versioned<StoredService>?> GetServiceAsync(string id, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(id);
        return await GetRecordAsync(StoreKeys.Service(_prefix, id), VirtualService.Parser, StoredRecords.Of, ct).ConfigureAwait(false);
    }

    /// <summary>The record at <paramref name="keyText"/> with its ModRevision (the version writes compare), or null if there is none.</summary>
    private async Task<Versioned<TStored>?> GetRecordAsync<TMessage, TStored>(string keyText, MessageParser<TMessage> parser, Func<TMessage, TStored> of, CancellationToken ct)
        where TMessage : IMessage<TMessage>
    {
        using var op = Begin(ct);
        var resp = await Range(new RangeRequest { Key = Key(keyText) }, op).ConfigureAwait(false);
        if (resp.Kvs.Count == 0) return null;
        return new Versioned<TStored>(of(Parse(parser, resp.Kvs[0].Value, keyText)), resp.Kvs[0].ModRevision);
    }

    public async Task UpdateServiceAsync(StoredService stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var service = StoredRecords.Message(stored);
        var identity = IdentityOrNull(service);
        var key = Key(StoreKeys.Service(_prefix, service.Id));
        using var op = Begin(ct);
        var backoff = ConflictBackoff();
        long seen = 0; // the latest service write a failed attempt met: the next check must include it
        for (var attempt = 1; ; attempt++)
        {
            // Updates are rare and may change the key: they keep the compare on the whole range, against the view's revision.
            var (readRevision, previous) = await CheckIdentityFree(identity, service, service.Id, seen, op).ConfigureAwait(false);
            var txn = new TxnRequest();
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = expectedVersion });
            if (identity is not null) txn.Compare.Add(ServicesUnchangedSince(readRevision));
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = service.ToByteString() } });
            // The range compare proved no other service holds the key: (re)write its index entry, which also
            // repairs one a Go merlin's writes left missing, and drop the entry of a key the service gave up.
            if (identity is not null) txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = Key(StoreKeys.ServiceKeyIndex(_prefix, identity)), Value = ByteString.CopyFromUtf8(service.Id) } });
            if (previous is not null && previous != identity)
                txn.Success.Add(DeleteIndexEntryOf(previous, service.Id));
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
            txn.Failure.Add(new RequestOp { RequestRange = LatestServiceWrite() });
            // A changed table guard (a server written meanwhile) shows as the same version below: retried.
            await AddTableAsync(txn, service.Id, service, servers => servers, op).ConfigureAwait(false);
            var resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded) return;
            var kvs = resp.Responses[0].ResponseRange.Kvs;
            if (kvs.Count == 0) throw new NotFoundException($"service \"{service.Id}\" not found");
            if (kvs[0].ModRevision != expectedVersion)
                throw new ConflictException($"service \"{service.Id}\" changed since version {expectedVersion} (now {kvs[0].ModRevision}); re-read and retry");
            // Other services changed since the view's revision: check again once the view has them.
            if (resp.Responses[1].ResponseRange.Kvs is { Count: > 0 } latest) seen = latest[0].ModRevision;
            await Retry(backoff, attempt, $"service \"{service.Id}\"", op).ConfigureAwait(false);
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
        var resp = await ServerTxnAsync(server.ServiceID, txn =>
        {
            txn.Compare.Add(new Compare { Key = service, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = server.ToByteString() } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = service, CountOnly = true } });
        }, servers => [.. servers.Where(s => Endpoint(s) != endpoint), server], op, created: server).ConfigureAwait(false);
        if (resp.Succeeded) return;
        if (resp.Responses[0].ResponseRange.Count == 0) throw new NotFoundException($"service \"{server.ServiceID}\" not found");
        throw new AlreadyExistsException($"server {endpoint} already exists in service \"{server.ServiceID}\"");
    }

    public async Task<Versioned<StoredServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        ArgumentNullException.ThrowIfNull(ip);
        return await GetRecordAsync(StoreKeys.Server(_prefix, serviceId, ip, port), RealServer.Parser, StoredRecords.Of, ct).ConfigureAwait(false);
    }

    public async Task UpdateServerAsync(StoredServer stored, long expectedVersion, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(stored);
        var server = StoredRecords.Message(stored);
        var (keyText, endpoint) = ServerKey(server);
        var key = Key(keyText);
        using var op = Begin(ct);
        var resp = await ServerTxnAsync(server.ServiceID, txn =>
        {
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = expectedVersion });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = server.ToByteString() } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
        }, servers => [.. servers.Where(s => Endpoint(s) != endpoint), server], op).ConfigureAwait(false);
        if (resp.Succeeded) return;
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
        var resp = await ServerTxnAsync(serviceId, txn =>
        {
            txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Greater, CreateRevision = 0 });
            if (expectedVersion is { } version)
                txn.Compare.Add(new Compare { Key = key, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = version });
            txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = key } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key, KeysOnly = true } });
        }, servers => [.. servers.Where(s => Endpoint(s) != endpoint)], op).ConfigureAwait(false);
        if (resp.Succeeded) return;
        var kvs = resp.Responses[0].ResponseRange.Kvs;
        if (kvs.Count == 0) throw new NotFoundException($"server {ip}:{port} not found in service \"{serviceId}\"");
        throw new ConflictException($"server {ip}:{port} of service \"{serviceId}\" changed since version {expectedVersion} (now {kvs[0].ModRevision}); re-read and retry");
    }

    /// <summary>
    /// A write of one server of <paramref name="serviceId"/> (<paramref name="build"/> adds its compares and operations,
    /// with the failure read its caller explains first) with the service's table in the same transaction. When the
    /// write failed only because the table's inputs moved, it is built again and retried; otherwise the response is
    /// the caller's to explain.
    /// </summary>
    private async Task<TxnResponse> ServerTxnAsync(string serviceId, Action<TxnRequest> build, Func<List<RealServer>, List<RealServer>> servers, Operation op,
        RealServer? created = null)
    {
        var backoff = ConflictBackoff();
        for (var attempt = 1; ; attempt++)
        {
            var txn = new TxnRequest();
            build(txn);
            var guard = await AddTableAsync(txn, serviceId, null, servers, op, mayUseView: attempt == 1, created).ConfigureAwait(false);
            var resp = await Txn(txn, op).ConfigureAwait(false);
            if (resp.Succeeded || guard is null || !guard.Broken(resp)) return resp;
            if (!guard.Unread) await Retry(backoff, attempt, $"table of service \"{serviceId}\"", op).ConfigureAwait(false);
        }
    }

    // ---------------------------------------------------------------- lookup tables

    /// <summary>
    /// What a write's table depends on, as read: the revision of the read, and the service's and the
    /// table's mod revisions (0: absent). <see cref="At"/> is where its reads start in the failure responses.
    /// </summary>
    private sealed record TableGuard(long Revision, long ServiceMod, long TableMod, int At)
    {
        /// <summary>From the view, not a read: the service keeps no table at <see cref="ServiceMod"/>, and none is stored.</summary>
        public bool Unread { get; init; }

        /// <summary>No table (no deriver): only the service's version, read to check a created server's family, is compared.</summary>
        public bool ServiceOnly { get; init; }

        /// <summary>Whether the transaction failed because what the table was computed from changed (then retry).</summary>
        public bool Broken(TxnResponse resp)
        {
            static long Mod(TxnResponse r, int i) => r.Responses[i].ResponseRange.Kvs is { Count: > 0 } kvs ? kvs[0].ModRevision : 0;
            if (ServiceOnly) return Mod(resp, At) != ServiceMod;
            if (Unread) return Mod(resp, At) != ServiceMod || Mod(resp, At + 1) != 0;
            return Mod(resp, At) != ServiceMod || Mod(resp, At + 1) > Revision || Mod(resp, At + 2) != TableMod;
        }
    }

    /// <summary>
    /// Adds to <paramref name="txn"/> the service's table as <see cref="EtcdStoreOptions.DeriveTable"/> computes
    /// it after this write (its servers as read, changed by <paramref name="apply"/>; its record replaced by
    /// <paramref name="newService"/> if given), and compares that hold only if nothing it was computed from
    /// changed: the service, every server of it (no mod revision after the read), the table. Null (nothing
    /// added) without a deriver or when the service is gone (the write itself then fails).
    /// A server write (<paramref name="newService"/> null) to a service the view knows keeps no table reads
    /// nothing: with <paramref name="mayUseView"/> it only compares the service's version as the view has it and
    /// that no table is stored — what the read would have found, as the deriver gives such a service no table
    /// whatever its servers; if either compare fails (a view behind, a table left by a Go merlin's re-scheduling),
    /// the caller's next attempt reads.
    /// </summary>
    private async Task<TableGuard?> AddTableAsync(TxnRequest txn, string serviceId, VirtualService? newService,
        Func<List<RealServer>, List<RealServer>> apply, Operation op, bool mayUseView = false, RealServer? created = null)
    {
        var serviceText = StoreKeys.Service(_prefix, serviceId);
        var serviceKey = Key(serviceText);
        if (_options.DeriveTable is not { } derive) return created is null ? null : await CheckFamilyAsync(txn, serviceText, created, op).ConfigureAwait(false);
        var serversKey = Key(StoreKeys.ServersOf(_prefix, serviceId));
        var tableKey = Key(StoreKeys.Table(_prefix, serviceId));
        if (mayUseView && newService is null && _options.KeepsTable is not null)
        {
            FollowServices();
            // A created server of the other family (as the view has the service) is checked by the read below: the
            // view may be behind, and only the service the write compares may refuse it.
            if (_view.TableFree(serviceId) is (> 0 and var version, var identity)
                && (created is null || StoredRecords.FamilyMismatch(identity, created) is null))
            {
                txn.Compare.Add(new Compare { Key = serviceKey, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = version });
                txn.Compare.Add(new Compare { Key = tableKey, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = 0 });
                int from = txn.Failure.Count;
                txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = serviceKey, KeysOnly = true } });
                txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = tableKey, KeysOnly = true } });
                return new TableGuard(0, version, 0, from) { Unread = true };
            }
        }
        var read = new TxnRequest();
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = serviceKey } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = serversKey, RangeEnd = PrefixEnd(serversKey) } });
        read.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = tableKey } });
        var resp = await Txn(read, op).ConfigureAwait(false);
        var serviceKvs = resp.Responses[0].ResponseRange.Kvs;
        if (serviceKvs.Count == 0) return null;
        var service = newService ?? Parse(VirtualService.Parser, serviceKvs[0].Value, serviceText);
        if (created is not null && StoredRecords.FamilyMismatch(StoredRecords.Identity(service), created) is { } wrongFamily)
            throw new Merlin.Model.ValidationException(wrongFamily);
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

    /// <summary>
    /// Without a table to derive, a created server's family is still checked against the service the write is made
    /// on: read it, refuse the other family, and compare its version (null, adding nothing, if it is gone: the write
    /// itself then fails).
    /// </summary>
    private async Task<TableGuard?> CheckFamilyAsync(TxnRequest txn, string serviceText, RealServer created, Operation op)
    {
        var serviceKey = Key(serviceText);
        var resp = await Range(new RangeRequest { Key = serviceKey }, op).ConfigureAwait(false);
        if (resp.Kvs.Count == 0) return null;
        if (StoredRecords.FamilyMismatch(StoredRecords.Identity(Parse(VirtualService.Parser, resp.Kvs[0].Value, serviceText)), created) is { } wrongFamily)
            throw new Merlin.Model.ValidationException(wrongFamily);
        long serviceMod = resp.Kvs[0].ModRevision;
        txn.Compare.Add(new Compare { Key = serviceKey, Target = CompareTarget.Mod, Result = CompareResult.Equal, ModRevision = serviceMod });
        int at = txn.Failure.Count;
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = serviceKey, KeysOnly = true } });
        return new TableGuard(0, serviceMod, 0, at) { ServiceOnly = true };
    }

    private static string Endpoint(RealServer server) => $"{server.Key?.Ip}:{server.Key?.Port}";

    // ---------------------------------------------------------------- list and watch

    public async Task<long> GetRevisionAsync(CancellationToken ct = default)
    {
        using var op = Begin(ct);
        // Any read's header carries the cluster's revision. One key, not the prefix: etcd (3.4) answers a count-only
        // range by walking the index entry of every key in it (110,000 at 10,000 × 10), and the daemon asks on every pass.
        var resp = await Range(new RangeRequest { Key = _allKey, KeysOnly = true }, op).ConfigureAwait(false);
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
    /// Pages of the services range, each read at the revision of the first. A page's servers are one range
    /// from the least to the greatest of its services' <c>servers/&lt;id&gt;/</c> prefixes, read
    /// <see cref="EtcdStoreOptions.PageSize"/> keys at a time: an id that is a prefix of another (<c>a</c>,
    /// <c>a-1</c>) sorts differently there than among the services, so servers of services of other pages may lie
    /// in that range; they are skipped undecoded. Its tables are one range too (<c>tables/&lt;id&gt;</c> sort as the
    /// ids do). Each page is bounded by <see cref="EtcdStoreOptions.Timeout"/> on its own.
    /// </summary>
    public async IAsyncEnumerable<StorePage> ListPagesAsync(int pageSize, [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageSize, 1);
        long revision = 0;
        ByteString? from = _servicesKey;
        var read = 0;
        while (from is not null)
        {
            (var items, revision, from) = await ReadServicesPage(from, revision, pageSize, read, ct).ConfigureAwait(false);
            read += items.Count;
            if (items.Count > 0 || (read == 0 && from is null)) yield return new StorePage(items, revision);
        }
    }

    /// <summary>One page of <see cref="ListPagesAsync"/> from <paramref name="from"/> at <paramref name="revision"/> (0: now); the key the next page starts at, or null.</summary>
    private async Task<(List<StoreItem> Items, long Revision, ByteString? Next)> ReadServicesPage(ByteString from, long revision, int pageSize, int read, CancellationToken ct)
    {
        using var op = Begin(ct);
        try
        {
            var resp = await Range(new RangeRequest { Key = from, RangeEnd = _servicesEnd, Limit = pageSize, Revision = revision }, op).ConfigureAwait(false);
            if (revision == 0) revision = resp.Header.Revision;
            var next = resp.More && resp.Kvs.Count > 0 ? After(resp.Kvs[^1].Key) : null;
            if (resp.Kvs.Count == 0) return ([], revision, null);
            var services = resp.Kvs.Select(kv => StoredRecords.Of(Parse(VirtualService.Parser, kv.Value, kv.Key.ToStringUtf8()))).ToList();

            // As ListAsync: servers go under the service whose record names the id of their key.
            var servers = new Dictionary<string, List<StoredServer>>(services.Count, StringComparer.Ordinal);
            foreach (var s in services) servers.TryAdd(s.Id, []);
            var serversPrefix = StoreKeys.ServersPrefix(_prefix);
            var (low, high) = Bounds(servers.Keys.Select(id => Key(StoreKeys.ServersOf(_prefix, id))), PrefixEnd);
            for (ByteString? key = low; key is not null;)
            {
                var page = await Range(new RangeRequest { Key = key, RangeEnd = high, Limit = _options.PageSize, Revision = revision }, op).ConfigureAwait(false);
                foreach (var kv in page.Kvs)
                {
                    var text = kv.Key.ToStringUtf8();
                    var rest = text.AsSpan(serversPrefix.Length);
                    var slash = rest.IndexOf('/');
                    if (slash > 0 && servers.TryGetValue(rest[..slash].ToString(), out var list)) list.Add(StoredRecords.Of(Parse(RealServer.Parser, kv.Value, text)));
                }
                key = page.More && page.Kvs.Count > 0 ? After(page.Kvs[^1].Key) : null;
            }

            var tables = new Dictionary<string, byte[]>(StringComparer.Ordinal);
            var tablesPrefix = StoreKeys.TablesPrefix(_prefix);
            var (first, last) = Bounds(servers.Keys.Select(id => Key(StoreKeys.Table(_prefix, id))), After);
            for (ByteString? key = first; key is not null;)
            {
                var page = await Range(new RangeRequest { Key = key, RangeEnd = last, Limit = _options.PageSize, Revision = revision }, op).ConfigureAwait(false);
                foreach (var kv in page.Kvs)
                {
                    var id = kv.Key.ToStringUtf8()[tablesPrefix.Length..];
                    if (servers.ContainsKey(id)) tables[id] = kv.Value.ToByteArray();
                }
                key = page.More && page.Kvs.Count > 0 ? After(page.Kvs[^1].Key) : null;
            }
            var items = services.Select(s => new StoreItem(s, servers[s.Id]) { Table = tables.GetValueOrDefault(s.Id) }).ToList();
            return (items, revision, next);
        }
        catch (StoreUnavailableException e) when (revision != 0 && e.InnerException is RpcException { StatusCode: StatusCode.OutOfRange })
        {
            throw new SnapshotCompactedException(
                $"etcd at {_endpointsText} compacted revision {revision} while a paged list read at it ({read} services read); list again", e);
        }
    }

    /// <summary>The least of <paramref name="keys"/> and the greatest of their ends (<paramref name="end"/> of each), bytewise as etcd orders keys.</summary>
    private static (ByteString Low, ByteString High) Bounds(IEnumerable<ByteString> keys, Func<ByteString, ByteString> end)
    {
        ByteString? low = null, high = null;
        foreach (var key in keys)
        {
            var e = end(key);
            if (low is null || key.Span.SequenceCompareTo(low.Span) < 0) low = key;
            if (high is null || e.Span.SequenceCompareTo(high.Span) > 0) high = e;
        }
        return (low!, high!);
    }

    /// <summary>The first key after <paramref name="key"/>.</summary>
    private static ByteString After(ByteString key) => ByteString.CopyFrom([.. key.Span, 0]);

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
    /// Ensures no other service holds <paramref name="identity"/> as of a revision at least
    /// <paramref name="minRevision"/>; returns that revision (the commit then requires the whole services range
    /// unchanged since) and the key <paramref name="exceptId"/> held then (its index entry to drop if it changes).
    /// </summary>
    private async Task<(long Revision, string? Previous)> CheckIdentityFree(string? identity, VirtualService service, string exceptId, long minRevision, Operation op)
    {
        var keys = await ServiceKeysAt(minRevision, identity ?? "", exceptId, op).ConfigureAwait(false);
        if (identity is null) return (keys.Revision, keys.Own); // a service without a key conflicts with nothing
        // An update that keeps its key takes nothing: a duplicate the Go merlin accepted must not block edits.
        if (keys.Own == identity) return (keys.Revision, keys.Own);
        // A holder may have been deleted since (a deleted key leaves the range compare nothing to catch), so
        // each is read; one that still holds the key refuses.
        foreach (var holder in keys.Holders)
        {
            if (await StillHolds(holder, identity, op).ConfigureAwait(false))
                throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holder}\"");
        }
        return (keys.Revision, keys.Own);
    }

    /// <summary>
    /// A create's check before its transaction: a service holding the key in the view (read again, as the view
    /// may lag a delete) refuses it, and gets the index entry a Go merlin's write left missing.
    /// </summary>
    private async Task RefuseKeyHeldInView(string identity, VirtualService service, Operation op)
    {
        var keys = await ServiceKeysAt(0, identity, service.Id, op).ConfigureAwait(false);
        foreach (var holder in keys.Holders)
        {
            if (!await StillHolds(holder, identity, op).ConfigureAwait(false)) continue;
            await RepairIndexEntry(identity, holder, op).ConfigureAwait(false);
            throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holder}\"");
        }
    }

    /// <summary>
    /// A create's look after its commit at <paramref name="committed"/> (see <see cref="CreateServiceAsync"/>):
    /// as of that revision or later, another holder of the key means a Go merlin's write slipped in before the
    /// commit (or just after), and this create is undone.
    /// </summary>
    private async Task UndoIfKeyTakenMeanwhile(string identity, VirtualService service, long committed, Operation op)
    {
        var holders = (await ServiceKeysAt(committed, identity, service.Id, op).ConfigureAwait(false)).Holders;
        if (holders.Length == 0) return;
        var key = Key(StoreKeys.Service(_prefix, service.Id));
        var servers = Key(StoreKeys.ServersOf(_prefix, service.Id));
        var undo = new TxnRequest();
        undo.Compare.Add(new Compare { Key = key, Target = CompareTarget.Create, Result = CompareResult.Equal, CreateRevision = committed });
        undo.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = key } });
        undo.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = servers, RangeEnd = PrefixEnd(servers) } });
        undo.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = Key(StoreKeys.Table(_prefix, service.Id)) } });
        undo.Success.Add(DeleteIndexEntryOf(identity, service.Id));
        await Txn(undo, op).ConfigureAwait(false);
        if (await StillHolds(holders[0], identity, op).ConfigureAwait(false)) await RepairIndexEntry(identity, holders[0], op).ConfigureAwait(false);
        throw new AlreadyExistsException($"service key {Describe(service)} is already used by service \"{holders[0]}\" (written while this create committed; the create was undone)");
    }

    private async Task<bool> StillHolds(string holder, string identity, Operation op)
    {
        var keyText = StoreKeys.Service(_prefix, holder);
        var held = await Range(new RangeRequest { Key = Key(keyText) }, op).ConfigureAwait(false);
        return held.Kvs.Count > 0 && StoredRecords.Identity(Parse(VirtualService.Parser, held.Kvs[0].Value, keyText)) == identity;
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

    private Compare ServicesUnchangedSince(long revision) => new()
    {
        Key = _servicesKey,
        RangeEnd = _servicesEnd,
        Target = CompareTarget.Mod,
        Result = CompareResult.Less,
        ModRevision = revision + 1,
    };

    /// <summary>The most recently written service's key (keys only), for a failed update to know what its view must reach.</summary>
    private RangeRequest LatestServiceWrite() => new()
    {
        Key = _servicesKey, RangeEnd = _servicesEnd, KeysOnly = true, Limit = 1,
        SortTarget = RangeRequest.Types.SortTarget.Mod, SortOrder = RangeRequest.Types.SortOrder.Descend,
    };

    /// <summary>
    /// The services other than <paramref name="exceptId"/> holding <paramref name="identity"/>, and the key
    /// <paramref name="exceptId"/> holds, as of a revision at least <paramref name="minRevision"/> (returned).
    /// From the view; if it has not got there within half the call's timeout (a watch on a connection that
    /// died quietly does not always say so), from one read of the range, and the view starts over.
    /// </summary>
    private async Task<(string[] Holders, string? Own, long Revision)> ServiceKeysAt(long minRevision, string identity, string exceptId, Operation op)
    {
        FollowServices();
        using (var budget = CancellationTokenSource.CreateLinkedTokenSource(op.Token))
        {
            budget.CancelAfter(_options.Timeout / 2);
            try
            {
                var revision = await _view.WaitAsync(minRevision, budget.Token).ConfigureAwait(false);
                return (_view.HoldersOf(identity, exceptId), _view.IdentityOf(exceptId), revision);
            }
            catch (OperationCanceledException) when (!op.Token.IsCancellationRequested)
            {
                try
                {
                    Volatile.Read(ref _restartWatch)?.Cancel();
                }
                catch (ObjectDisposedException)
                {
                    // that watch has ended already
                }
            }
            catch (OperationCanceledException)
            {
                op.ThrowTimeoutOrCanceled();
                throw;
            }
        }
        var (kvs, read) = await ReadAll(_servicesKey, _servicesEnd, op).ConfigureAwait(false);
        var entries = kvs.Select(ServiceEntryOf).ToArray();
        return ([.. entries.Where(e => e.Identity == identity && e.Id != exceptId).Select(e => e.Id)],
            entries.FirstOrDefault(e => e.Id == exceptId).Identity is { Length: > 0 } own ? own : null, read);
    }

    /// <summary>Starts keeping <see cref="_view"/> (once: from the first write that needs it on).</summary>
    private void FollowServices()
    {
        if (Volatile.Read(ref _following) is null)
        {
            lock (_followGate) _following ??= Task.Run(FollowServicesAsync);
        }
    }

    /// <summary>
    /// Keeps <see cref="_view"/>: reads the services range at one revision, then watches it from there. A
    /// compaction of the history it needs starts over with a read; a failure is recorded (creates waiting
    /// then report it) and retried after a backoff, until the store is disposed.
    /// </summary>
    private async Task FollowServicesAsync()
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(2));
        while (!_closed.IsCancellationRequested)
        {
            try
            {
                long revision;
                using (var op = new Operation(this, CancellationToken.None))
                {
                    (var kvs, revision) = await ReadAll(_servicesKey, _servicesEnd, op).ConfigureAwait(false);
                    _view.Reset(kvs.Select(ServiceEntryOf), revision);
                }
                backoff.Reset();
                await WatchServices(revision).ConfigureAwait(false);
            }
            catch (Exception) when (_closed.IsCancellationRequested)
            {
                return;
            }
            catch (Exception)
            {
                _view.Fail();
                // A write waiting for the view cuts the backoff short: it would rather try now than time out.
                await Task.WhenAny(Task.Delay(backoff.Next(), _closed.Token), _view.Wanted()).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Applies the services range's events after <paramref name="revision"/> to the view; returns when etcd compacted past it.</summary>
    private async Task WatchServices(long revision)
    {
        using var startTimer = new CancellationTokenSource(_options.Timeout);
        using var restart = new CancellationTokenSource();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_closed.Token, startTimer.Token, restart.Token);
        Volatile.Write(ref _restartWatch, restart);
        using var call = _watchClient.Watch(cancellationToken: linked.Token);
        await WatchStep(async () =>
        {
            await call.RequestStream.WriteAsync(new WatchRequest
            {
                CreateRequest = new WatchCreateRequest { Key = _servicesKey, RangeEnd = _servicesEnd, StartRevision = revision + 1 },
            }, linked.Token).ConfigureAwait(false);
            return true;
        }, "start a watch of the services", CancellationToken.None, startTimer).ConfigureAwait(false);
        var created = false;
        while (true)
        {
            if (!await WatchStep(() => call.ResponseStream.MoveNext(linked.Token), "watch of the services", CancellationToken.None, startTimer).ConfigureAwait(false))
                throw new StoreUnavailableException($"etcd at {_endpointsText} closed the watch stream");
            var resp = call.ResponseStream.Current;
            if (!created && resp.Created)
            {
                created = true;
                startTimer.CancelAfter(Timeout.InfiniteTimeSpan);
            }
            if (resp.CompactRevision > 0) return;
            if (resp.Canceled) throw new StoreUnavailableException($"etcd at {_endpointsText} canceled the watch: {resp.CancelReason}");
            if (resp.Events.Count == 0) continue;
            foreach (var ev in resp.Events)
            {
                if (ev.Type == Mvccpb.Event.Types.EventType.Delete) _view.Delete(ev.Kv.Key.ToStringUtf8()[_servicesKey.Length..]);
                else _view.Put(ServiceEntryOf(ev.Kv));
            }
            // Only events' own revisions: a response's header may be ahead of what a catching-up watch delivered.
            _view.Advance(resp.Events[^1].Kv.ModRevision);
        }
    }

    private ServiceEntry ServiceEntryOf(Mvccpb.KeyValue kv)
    {
        var keyText = kv.Key.ToStringUtf8();
        var service = Parse(VirtualService.Parser, kv.Value, keyText);
        var keepsTable = _options.KeepsTable is not { } keeps || keeps(StoredRecords.Of(service));
        return new ServiceEntry(keyText[_servicesKey.Length..], StoredRecords.Identity(service), kv.ModRevision, keepsTable);
    }

    /// <summary>The delay between attempts of a write whose compares other writers broke (several clients race in step: jitter).</summary>
    private static Backoff ConflictBackoff() => new(TimeSpan.FromMilliseconds(2), TimeSpan.FromMilliseconds(100), jitter: 0.5);

    private static async Task Retry(Backoff backoff, int attempt, string what, Operation op)
    {
        if (attempt >= MaxServiceWriteAttempts)
            throw new ConflictException($"{what}: other writers kept changing it during {attempt} attempts; retry");
        try
        {
            await Task.Delay(backoff.Next(), op.Token).ConfigureAwait(false);
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
                    from = After(resp.Kvs[^1].Key);
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

    private static GrpcChannel CreateChannel(Uri[] endpoints, TimeSpan timeout, Microsoft.Extensions.Logging.ILoggerFactory? logging)
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
            LoggerFactory = logging,
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
