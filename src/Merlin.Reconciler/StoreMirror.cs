using System.Collections.Immutable;
using System.Net;
using Merlin.Model;
using Merlin.Store;

namespace Merlin.Reconciler;

/// <summary>
/// The store's records as the reconciler last knew them, kept decoded and moved forward by watch events, so a
/// pass after one change decodes one service instead of the whole store. What it yields — desired state,
/// rejected records, health checks, record origins — is what <see cref="DesiredState.Build"/> makes of a List at
/// the same revision (a property test holds the two paths equal). Not thread-safe: the reconciler's pass owns it.
/// </summary>
public sealed class StoreMirror
{
    /// <summary>Everything stored under one service id: the service (null for servers left without one) and its servers by endpoint.</summary>
    private sealed class Entry
    {
        public StoredService? Service;
        public readonly SortedDictionary<string, StoredServer> Servers = new(StringComparer.Ordinal);
        /// <summary>The service's stored lookup table (md-table services), or null.</summary>
        public byte[]? Table;

        // Decoded from the two above by Derive.
        public ServiceKey? Key;
        public ServiceState? State;
        public List<RejectedRecord> ServiceRejections = [];
        public List<RejectedRecord> ServerRejections = [];
        public List<HealthTarget> Checks = [];
        public (int Services, int Servers, int Orphaned) Origins;

        public bool Reports => ServiceRejections.Count > 0 || ServerRejections.Count > 0 || Checks.Count > 0;
    }

    // Ordered as a List returns services (by id), which decides which of two services with one key is programmed.
    private readonly SortedDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<ServiceKey, SortedSet<string>> _claimants = new();
    private Dictionary<ServiceKey, ServiceState> _desired = new();
    // The desired state's server count and VIPs, kept as keys come and go (a VIP may carry several ports).
    private int _serverCount;
    private readonly Dictionary<IPAddress, int> _addressUses = new();
    private ImmutableHashSet<IPAddress> _addresses = [];
    private (int Services, int Servers, int Orphaned) _origins;

    // Whether md-table services get their stored table (DesiredState.Build's withTables): only for a dataplane that programs them.
    private readonly bool _withTables;

    private StoreMirror(long revision, bool withTables) => (Revision, _withTables) = (revision, withTables);

    /// <summary>The revision of the last event applied (or of the List it started from).</summary>
    public long Revision { get; private set; }

    /// <summary>The desired state; a new instance whenever a change touched it, the same one otherwise.</summary>
    public DataplaneState Desired { get; private set; } = DataplaneState.Empty;

    public IReadOnlyList<RejectedRecord> Rejected { get; private set; } = [];

    public IReadOnlyList<HealthTarget> Checks { get; private set; } = [];

    public StoreOrigins Origins => new(_origins.Services, _origins.Servers, _origins.Orphaned);

    /// <summary>A mirror of a List.</summary>
    /// <param name="withTables">As <see cref="DesiredState.Build"/>'s: give md-table services their stored table.</param>
    public static StoreMirror Load(StoreSnapshot snapshot, bool withTables = false)
    {
        var mirror = new StoreMirror(snapshot.Revision, withTables);
        foreach (var item in snapshot.Items)
        {
            var entry = mirror.EntryOf(item.Service.Id);
            entry.Service = item.Service;
            entry.Table = item.Table;
            foreach (var server in item.Servers) entry.Servers[server.Endpoint] = server;
        }
        foreach (var orphan in snapshot.Orphans) mirror.EntryOf(orphan.ServiceId).Servers[orphan.Endpoint] = orphan.Server;
        foreach (var (id, entry) in mirror._entries) mirror.Derive(id, entry);
        mirror.Compose();
        mirror._desired = new Dictionary<ServiceKey, ServiceState>(mirror._claimants.Count);
        var addresses = ImmutableHashSet.CreateBuilder<IPAddress>();
        foreach (var (key, ids) in mirror._claimants)
        {
            var state = mirror._entries[ids.Min!].State!;
            mirror._desired[key] = state;
            mirror.Count(null, state, addresses);
        }
        mirror._addresses = addresses.ToImmutable();
        mirror.Desired = new DataplaneState(mirror._desired, mirror._serverCount, mirror._addresses);
        return mirror;
    }

    /// <summary>
    /// Applies watch events in order and returns the service keys whose desired state may have changed; null when
    /// the events cannot be applied (a Resync, a Put without its record) and the mirror must be loaded again.
    /// Events older than <see cref="Revision"/> are already in it and skipped; those of the same revision are not
    /// (one write's events share it) — applying one twice changes nothing.
    /// </summary>
    public IReadOnlySet<ServiceKey>? Apply(IEnumerable<StoreChange> changes)
    {
        var touched = new HashSet<string>(StringComparer.Ordinal);
        foreach (var change in changes)
        {
            if (change.Kind == StoreChangeKind.Resync) return null;
            if (change.Revision < Revision) continue;
            Revision = change.Revision;
            var put = change.Kind == StoreChangeKind.Put;
            if (change.Key.StartsWith("services/", StringComparison.Ordinal))
            {
                var id = change.Key["services/".Length..];
                if (put && change.Service is null) return null;
                EntryOf(id).Service = put ? change.Service : null;
                touched.Add(id);
            }
            else if (change.Key.StartsWith("servers/", StringComparison.Ordinal))
            {
                var rest = change.Key["servers/".Length..];
                var slash = rest.IndexOf('/');
                if (slash <= 0) continue; // a List skips such keys too
                var id = rest[..slash];
                var endpoint = rest[(slash + 1)..];
                if (put && change.Server is null) return null;
                if (put) EntryOf(id).Servers[endpoint] = change.Server!;
                else if (_entries.TryGetValue(id, out var entry)) entry.Servers.Remove(endpoint);
                touched.Add(id);
            }
            else if (change.Key.StartsWith("tables/", StringComparison.Ordinal))
            {
                var id = change.Key["tables/".Length..];
                if (put && change.Table is null) return null;
                EntryOf(id).Table = put ? change.Table : null;
                if (_withTables) touched.Add(id); // otherwise the table changes nothing this node programs
            }
        }
        return Update(touched);
    }

    private HashSet<ServiceKey> Update(HashSet<string> ids)
    {
        var keys = new HashSet<ServiceKey>();
        var recompose = false;
        foreach (var id in ids)
        {
            if (!_entries.TryGetValue(id, out var entry)) continue;
            recompose |= entry.Reports || Contested(entry.Key);
            if (entry.Key is { } old)
            {
                keys.Add(old);
                var claimants = _claimants[old];
                claimants.Remove(id);
                if (claimants.Count == 0) _claimants.Remove(old);
            }
            _origins = (_origins.Services - entry.Origins.Services, _origins.Servers - entry.Origins.Servers, _origins.Orphaned - entry.Origins.Orphaned);
            Derive(id, entry);
            if (entry.Key is { } now) keys.Add(now);
            recompose |= entry.Reports || Contested(entry.Key);
            if (entry.Service is null && entry.Servers.Count == 0 && entry.Table is null) _entries.Remove(id);
        }
        if (recompose) Compose();
        if (keys.Count == 0) return keys;
        // A new dictionary, not an edit: the last pass's desired state may still be read elsewhere (status, announcer).
        var desired = new Dictionary<ServiceKey, ServiceState>(_desired);
        var addresses = _addresses.ToBuilder();
        foreach (var key in keys)
        {
            desired.Remove(key, out var was);
            ServiceState? now = null;
            if (_claimants.TryGetValue(key, out var claimants)) desired[key] = now = _entries[claimants.Min!].State!;
            Count(was, now, addresses);
        }
        _desired = desired;
        _addresses = addresses.ToImmutable(); // the same set when no VIP came or went
        Desired = new DataplaneState(desired, _serverCount, _addresses);
        return keys;
    }

    /// <summary>Moves the server count and the VIPs from one service's desired state to another (either may be null).</summary>
    private void Count(ServiceState? was, ServiceState? now, ImmutableHashSet<IPAddress>.Builder addresses)
    {
        _serverCount += (now?.Servers.Count ?? 0) - (was?.Servers.Count ?? 0);
        if (was is not null && DataplaneState.VipOf(was.Key) is { } gone && --_addressUses[gone] == 0)
        {
            _addressUses.Remove(gone);
            addresses.Remove(gone);
        }
        if (now is not null && DataplaneState.VipOf(now.Key) is { } added)
        {
            _addressUses[added] = _addressUses.GetValueOrDefault(added) + 1;
            addresses.Add(added);
        }
    }

    private bool Contested(ServiceKey? key) => key is { } k && _claimants.TryGetValue(k, out var ids) && ids.Count > 1;

    private Entry EntryOf(string id)
    {
        if (!_entries.TryGetValue(id, out var entry)) _entries[id] = entry = new Entry();
        return entry;
    }

    /// <summary>Decodes one id's records (as <see cref="DesiredState.Build"/> does) and claims its key.</summary>
    private void Derive(string id, Entry entry)
    {
        entry.Key = null;
        entry.State = null;
        entry.ServiceRejections = [];
        entry.ServerRejections = [];
        entry.Checks = [];
        if (entry.Service is null)
        {
            entry.Origins = (0, 0, entry.Servers.Count);
        }
        else
        {
            var notByMerlin = 0;
            foreach (var server in entry.Servers.Values)
                if (!server.WrittenByMerlin) notByMerlin++;
            entry.Origins = (entry.Service.WrittenByMerlin ? 0 : 1, notByMerlin, 0);
            if (DesiredState.DecodeService(entry.Service, entry.ServiceRejections) is { } service)
            {
                entry.Key = service.Key;
                var servers = DesiredState.DecodeServers(entry.Service.Id, service.Key, entry.Servers.Values, entry.ServerRejections, entry.Checks);
                entry.State = new ServiceState(service.Key, DesiredState.WithStoredTable(service.Config, entry.Table, _withTables), servers);
                if (!_claimants.TryGetValue(service.Key, out var claimants)) _claimants[service.Key] = claimants = new SortedSet<string>(StringComparer.Ordinal);
                claimants.Add(id);
            }
        }
        _origins = (_origins.Services + entry.Origins.Services, _origins.Servers + entry.Origins.Servers, _origins.Orphaned + entry.Origins.Orphaned);
    }

    /// <summary>Rejections and checks in the store's order, as a List-based build reports them.</summary>
    private void Compose()
    {
        var rejected = new List<RejectedRecord>();
        var checks = new List<HealthTarget>();
        foreach (var (id, entry) in _entries)
        {
            if (entry.Service is null) continue;
            rejected.AddRange(entry.ServiceRejections);
            if (entry.Key is not { } key) continue;
            if (_claimants[key].Min != id)
            {
                rejected.Add(DesiredState.KeyTaken(entry.Service.Id, key));
                continue;
            }
            rejected.AddRange(entry.ServerRejections);
            checks.AddRange(entry.Checks);
        }
        Rejected = rejected;
        Checks = checks;
    }
}
