namespace Merlin.Store;

/// <summary>
/// Desired state: virtual services and their real servers, as <see cref="StoredService"/> and
/// <see cref="StoredServer"/> records: the model they decode to, and the record itself, whose encoding (the wire
/// contract's protobuf, which a Go merlin sharing etcd reads) only the stores' codec knows. Every write is atomic;
/// creates are create-if-absent; updates are optimistic (they name the version they read). Implementations raise only <see cref="StoreException"/> subclasses.
/// Validation is the caller's job: a store keeps what it is given.
/// </summary>
public interface IStore : IAsyncDisposable
{
    /// <summary>"sqlite" or "etcd3".</summary>
    string Backend { get; }

    /// <summary>Fails with <see cref="AlreadyExistsException"/> if the id or the key (ip, port, protocol / fwmark) is taken.</summary>
    Task CreateServiceAsync(StoredService service, CancellationToken ct = default);

    Task<Versioned<StoredService>?> GetServiceAsync(string id, CancellationToken ct = default);

    /// <summary>Replaces the record if it is still at <paramref name="expectedVersion"/>, else <see cref="ConflictException"/>.</summary>
    Task UpdateServiceAsync(StoredService service, long expectedVersion, CancellationToken ct = default);

    /// <summary>Deletes the service and all its servers in one transaction; <see cref="NotFoundException"/> if absent.</summary>
    Task DeleteServiceAsync(string id, CancellationToken ct = default);

    /// <summary>
    /// <see cref="NotFoundException"/> if the service is missing, <see cref="AlreadyExistsException"/> if the server
    /// exists, <see cref="ValidationException"/> (field <c>key.ip</c>) if the server's address is not of the service's
    /// family — checked against the very version of the service the write is made on (a firewall-mark service, or one
    /// without a valid address, takes either), so the API need not read the service first.
    /// </summary>
    Task CreateServerAsync(StoredServer server, CancellationToken ct = default);

    Task<Versioned<StoredServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default);

    Task UpdateServerAsync(StoredServer server, long expectedVersion, CancellationToken ct = default);

    Task DeleteServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default);

    /// <summary>
    /// Deletes the server only if its record is still at <paramref name="expectedVersion"/>, so a decision
    /// taken on what was read (a drain's deadline has passed) holds when the delete happens, and of several
    /// writers that read the same version exactly one deletes. <see cref="ConflictException"/> if the record
    /// changed since, <see cref="NotFoundException"/> if it is gone.
    /// </summary>
    Task DeleteServerAsync(string serviceId, string ip, uint port, long expectedVersion, CancellationToken ct = default);

    /// <summary>A consistent snapshot of everything, and the revision it was read at.</summary>
    Task<StoreSnapshot> ListAsync(CancellationToken ct = default);

    /// <summary>
    /// The items of <see cref="ListAsync"/>, in its order, at one revision, in pages of at most
    /// <paramref name="pageSize"/> services, each with all its servers and its table: a page is read when the
    /// caller asks for it, so the first arrives before the rest is read. Writes after the first page are not
    /// seen. If the store can no longer read at that revision (etcd compacted it meanwhile) the enumeration
    /// ends with <see cref="SnapshotCompactedException"/>. An empty store gives one empty page; pages carry no
    /// orphaned servers. (The default reads a whole List and cuts it.)
    /// </summary>
    async IAsyncEnumerable<StorePage> ListPagesAsync(int pageSize, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageSize, 1);
        var snapshot = await ListAsync(ct).ConfigureAwait(false);
        if (snapshot.Items.Count == 0) yield return new StorePage([], snapshot.Revision);
        foreach (var page in snapshot.Items.Chunk(pageSize)) yield return new StorePage(page, snapshot.Revision);
    }

    /// <summary>
    /// One service as <see cref="ListAsync"/> has it — the service, its servers by endpoint, its table — read at one
    /// revision without reading the others; null if the service does not exist. (The default reads a whole List.)
    /// </summary>
    async Task<StoreItem?> GetItemAsync(string serviceId, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(serviceId);
        return (await ListAsync(ct).ConfigureAwait(false)).Items.FirstOrDefault(i => i.Service.Id == serviceId);
    }

    /// <summary>
    /// The revision a <see cref="ListAsync"/> now would be read at, without reading anything else: equal to
    /// the last snapshot's revision only if nothing changed since (etcd: any write to the cluster moves it,
    /// which costs a needless re-list, never a missed change). Lets a resync skip an unchanged store.
    /// </summary>
    Task<long> GetRevisionAsync(CancellationToken ct = default);

    /// <summary>
    /// Changes after <paramref name="afterRevision"/>, in order, each Put with the record it wrote (so a follower
    /// can keep the decoded state without reading the store again). If the history needed is gone
    /// (etcd compaction) a single <see cref="StoreChangeKind.Resync"/> is yielded and the enumeration
    /// ends: the caller re-lists, and may resume watching from the Resync's revision (or the new list's).
    /// Ends with <see cref="StoreUnavailableException"/> if the store becomes unreachable.
    /// </summary>
    IAsyncEnumerable<StoreChange> WatchAsync(long afterRevision, CancellationToken ct = default);

    /// <summary>
    /// The fleet-wide settings (empty until set). etcd keeps them at <c>&lt;prefix&gt;/settings</c>: outside the
    /// <c>services/</c> and <c>servers/</c> ranges the Go merlin lists, so a Go merlin sharing the store never parses them.
    /// </summary>
    Task<StoredSettings> GetSettingsAsync(CancellationToken ct = default);

    /// <summary>Replaces the settings (last writer wins: they change by hand, rarely).</summary>
    Task SetSettingsAsync(StoredSettings settings, CancellationToken ct = default);
}

public sealed record Versioned<T>(T Value, long Version);

public sealed record StoreItem(StoredService Service, IReadOnlyList<StoredServer> Servers)
{
    /// <summary>The service's stored lookup table (see <see cref="ServiceTableDeriver"/>), or null if it has none.</summary>
    public byte[]? Table { get; init; }
}

/// <summary>
/// Computes a service's lookup table from the service, its servers and the table stored before (null if none);
/// returns null when the service keeps no table. A store given one (its options' <c>DeriveTable</c>) calls it
/// inside the transaction of every write that changes a service's servers or the service itself, and stores
/// the result in that same transaction — so a table can depend on its history (the minimal-disruption table)
/// and still be exactly one per server set, written by the API, the store's only writer. Must be pure and
/// deterministic: etcd may call it again when a concurrent write made it retry.
/// </summary>
public delegate byte[]? ServiceTableDeriver(StoredService service, IReadOnlyList<StoredServer> servers, byte[]? previous);

/// <summary>One page of <see cref="IStore.ListPagesAsync"/>: whole services, read at <see cref="Revision"/> (the same for every page).</summary>
public sealed record StorePage(IReadOnlyList<StoreItem> Items, long Revision);

public sealed record StoreSnapshot(IReadOnlyList<StoreItem> Items, long Revision)
{
    /// <summary>
    /// Server records under a service id that has no service (etcd: left by a Go merlin's <c>service del</c>, which
    /// deletes only <c>services/&lt;id&gt;</c>). They are in no item: no merlin reads them. Always 0 on SQLite, whose
    /// deletes cascade and which a Go merlin never writes.
    /// </summary>
    public int OrphanedServers { get; init; }

    /// <summary>
    /// Those records, with the service id and endpoint of their keys: a follower of the watch must know them, since a
    /// Go merlin's <c>service add</c> of that id gives them a service again (a List then shows them under it).
    /// </summary>
    public IReadOnlyList<OrphanedServer> Orphans { get; init; } = [];
}

/// <summary>A server record under <c>servers/&lt;ServiceId&gt;/&lt;Endpoint&gt;</c> whose service does not exist.</summary>
public sealed record OrphanedServer(string ServiceId, string Endpoint, StoredServer Server);

public enum StoreChangeKind { Put, Delete, Resync }

/// <summary>
/// One change: the key under the store's prefix that changed (e.g. <c>services/web</c>) and the revision. The
/// changes of one write share its revision (a service delete: the service and each of its servers).
/// </summary>
public sealed record StoreChange(StoreChangeKind Kind, string Key, long Revision)
{
    /// <summary>What a Put under <c>services/</c> wrote, as of <see cref="Revision"/>; null for other changes.</summary>
    public StoredService? Service { get; init; }

    /// <summary>What a Put under <c>servers/</c> wrote, as of <see cref="Revision"/>; null for other changes.</summary>
    public StoredServer? Server { get; init; }

    /// <summary>What a Put under <c>tables/</c> wrote: the service's stored lookup table (<see cref="StoreItem.Table"/>).</summary>
    public byte[]? Table { get; init; }

    /// <summary>The same change: kind, key and revision name it; the records are what it carried.</summary>
    public bool Equals(StoreChange? other) =>
        other is not null && Kind == other.Kind && Key == other.Key && Revision == other.Revision;

    public override int GetHashCode() => HashCode.Combine(Kind, Key, Revision);
}

public abstract class StoreException(string message, Exception? inner = null) : Exception(message, inner);

public sealed class NotFoundException(string message) : StoreException(message);

public sealed class AlreadyExistsException(string message) : StoreException(message);

/// <summary>The record changed between read and write; the caller re-reads and retries.</summary>
public sealed class ConflictException(string message) : StoreException(message);

/// <summary>
/// A read that spans several calls (<see cref="IStore.ListPagesAsync"/>) lost its revision: etcd compacted it before
/// the last page was read. What was read is consistent but incomplete; the caller reads again.
/// </summary>
public sealed class SnapshotCompactedException(string message, Exception? inner = null) : StoreException(message, inner);

public sealed class StoreUnavailableException(string message, Exception? inner = null) : StoreException(message, inner);
