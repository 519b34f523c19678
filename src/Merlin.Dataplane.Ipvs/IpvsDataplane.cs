using Merlin.Dataplane.Abstractions;
using Merlin.Ipvs;
using Merlin.Model;
using Merlin.Linux;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Ipvs;

/// <summary>
/// An <see cref="IDataplane"/> over the kernel's IPVS table, through our own generic-netlink client.
/// <para>
/// Ownership: by default it owns the services in the store (the desired state) and those it created or
/// adopted before (remembered in <see cref="IpvsDataplaneOptions.OwnershipFile"/>); any other service, a
/// kube-proxy's or a hand-made one, is invisible to the planner and never touched.
/// <see cref="IpvsDataplaneOptions.OwnWholeTable"/> owns everything, as the Go merlin did.
/// </para>
/// <para>
/// Reads: IPVS has no change counter or notification, and a full read costs one dump per service (17 s
/// for 10,000 services under emulation). So the dataplane remembers what it read and wrote, and a resync
/// re-reads a rotating budget of services (<see cref="IpvsDataplaneOptions.AuditServicesPerPass"/>); a
/// table within the budget is read whole each pass. Any failed write forgets the cache, so the next pass
/// reads the kernel whole and plans from the truth.
/// </para>
/// <para>
/// Writes: a plan is one batch of netlink requests, many per datagram, each with its own result. A
/// changed real server is edited in place (IPVS_CMD_SET_DEST), never deleted and re-added: that would
/// drop its connections and, in the kernel, search a trash list of recently deleted destinations.
/// </para>
/// </summary>
public sealed partial class IpvsDataplane : IDataplane, IDataplaneCounters, IDataplaneDiagnostics, IDisposable
{
    private readonly IpvsDataplaneOptions _options;
    private readonly IpvsClient _ipvs;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly OwnedServices _owned;

    /// <summary>Every kernel service seen at the last read, with its servers if we own it (null = not read).</summary>
    private Dictionary<ServiceKey, CachedService>? _cache;
    /// <summary>Bumps whenever the cache changes, so an unchanged table can be answered with the last state.</summary>
    private long _cacheVersion;
    private (DataplaneState Desired, long Version, DataplaneState State)? _lastRead;
    private (DataplaneState Desired, long Version, List<ServiceKey> Keys)? _auditOrder;
    private long _sysctlsCheckedAt;
    private DataplaneState? _sysctlsCheckedFor;
    private int _auditCursor;
    private IReadOnlyList<SysctlStatus> _sysctls = [];
    private IReadOnlyList<string> _warnings = [];
    private string _lastSysctlReport = "";

    private sealed record CachedService(ServiceState? State, ServiceConfig Config);

    public IpvsDataplane(IpvsDataplaneOptions options, ILogger<IpvsDataplane> logger)
        : this(options, IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = options.NetworkNamespace }), logger)
    {
    }

    internal IpvsDataplane(IpvsDataplaneOptions options, IpvsClient ipvs, ILogger logger)
    {
        if (options.AuditServicesPerPass < 1)
            throw new ArgumentOutOfRangeException(nameof(options), options.AuditServicesPerPass, "AuditServicesPerPass: at least 1");
        _options = options;
        _ipvs = ipvs;
        _logger = logger;
        _owned = new OwnedServices(options.OwnershipFile, LogOwnershipFileProblem);
    }

    public string Name => "ipvs";

    /// <summary>Write requests sent to the kernel since start (a restart that finds everything in place sends none).</summary>
    public long KernelWrites { get; private set; }

    /// <summary>Services the last audit re-read (0 when the pass read the whole table).</summary>
    public int LastAudit { get; private set; }

    /// <summary>Whole-table reads since start (the first pass, and after a failed write).</summary>
    public long FullReads { get; private set; }

    public IReadOnlyList<SysctlStatus> Sysctls { get { lock (_lock) return _sysctls; } }

    public IReadOnlyList<string> Warnings { get { lock (_lock) return _warnings; } }

    /// <summary>Kernel services this dataplane owns beyond the store's (created or adopted, then deleted from the store).</summary>
    public IReadOnlyCollection<ServiceKey> Remembered { get { lock (_lock) return _owned.Keys.ToList(); } }

    public Task<DataplaneState> ReadAsync(CancellationToken ct) => ReadAsync(DataplaneState.Empty, ct);

    public Task<DataplaneState> ReadAsync(DataplaneState desired, CancellationToken ct) =>
        Task.Run(() =>
        {
            lock (_lock)
            {
                // Sysctls are five small files, but under a namespace each read costs a thread: every 10 s is enough.
                if (!ReferenceEquals(desired, _sysctlsCheckedFor) || System.Diagnostics.Stopwatch.GetElapsedTime(_sysctlsCheckedAt) > TimeSpan.FromSeconds(10))
                {
                    CheckSysctls(desired);
                    _sysctlsCheckedFor = desired;
                    _sysctlsCheckedAt = System.Diagnostics.Stopwatch.GetTimestamp();
                }
                return Read(desired, ct);
            }
        }, ct);

    public async Task ApplyAsync(Operation operation, CancellationToken ct)
    {
        var errors = await ApplyAsync([operation], ct);
        if (errors[0] is { } e) throw e;
    }

    public Task<IReadOnlyList<Exception?>> ApplyAsync(IReadOnlyList<Operation> operations, CancellationToken ct) =>
        Task.Run(() =>
        {
            lock (_lock) return Apply(operations, ct);
        }, ct);

    // ---- reading ---------------------------------------------------------------------------------

    private bool Owns(ServiceKey key, DataplaneState desired) =>
        _options.OwnWholeTable || desired.Services.ContainsKey(key) || _owned.Contains(key);

    private DataplaneState Read(DataplaneState desired, CancellationToken ct)
    {
        if (_cache is null || OwnedCount(desired) <= _options.AuditServicesPerPass)
            ReadWhole(desired, ct);
        else
            Audit(desired, ct);

        // Nothing found or written since the last read, for the same desired state: the same answer, so
        // a resync of a large unchanged table costs the audit and no more (the reconciler skips planning).
        if (_lastRead is { } last && ReferenceEquals(last.Desired, desired) && last.Version == _cacheVersion) return last.State;

        var owned = new Dictionary<ServiceKey, ServiceState>(desired.Services.Count);
        foreach (var (key, cached) in _cache!.ToList())
        {
            if (!Owns(key, desired)) continue;
            // A service that just became ours (it was hand-made, now it is in the store): adopt its servers.
            var state = cached.State ?? ReadServers(key, cached.Config, ct);
            if (cached.State is null) _cache![key] = cached with { State = state };
            owned[key] = state;
        }
        RememberAdopted(owned.Keys, desired);
        var result = new DataplaneState(owned);
        _lastRead = (desired, _cacheVersion, result);
        return result;
    }

    private int OwnedCount(DataplaneState desired) =>
        _options.OwnWholeTable ? _cache!.Count : _cache!.Keys.Count(k => Owns(k, desired));

    private void ReadWhole(DataplaneState desired, CancellationToken ct)
    {
        var services = _ipvs.GetServices(ct);
        var cache = new Dictionary<ServiceKey, CachedService>(services.Count);
        foreach (var s in services)
        {
            cache[s.Key] = new CachedService(Owns(s.Key, desired) ? ReadServers(s.Key, s.Config, ct) : null, s.Config);
        }
        _cache = cache;
        _cacheVersion++;
        FullReads++;
        LastAudit = 0;
    }

    /// <summary>Re-reads the next owned services, within <see cref="IpvsDataplaneOptions.AuditServicesPerPass"/> and the time budget.</summary>
    private void Audit(DataplaneState desired, CancellationToken ct)
    {
        // The rotation order is rebuilt only when what we own may have changed.
        if (_auditOrder is not { } order || !ReferenceEquals(order.Desired, desired) || order.Version != _cacheVersion)
        {
            _auditOrder = order = (desired, _cacheVersion, _cache!.Keys.Where(k => Owns(k, desired)).Order(ServiceKeyComparer.Instance).ToList());
        }
        var owned = order.Keys;
        if (owned.Count == 0) return;
        _auditCursor %= owned.Count;
        var budget = Math.Min(_options.AuditServicesPerPass, owned.Count);
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        var audited = 0;
        var changed = false;
        for (var i = 0; i < budget; i++, audited++)
        {
            if (i > 0 && System.Diagnostics.Stopwatch.GetElapsedTime(started) > _options.AuditTimeBudget) break;
            var key = owned[(_auditCursor + i) % owned.Count];
            var found = _ipvs.GetService(key);
            if (found is null)
            {
                changed |= _cache!.Remove(key);
                continue;
            }
            var state = ReadServers(key, found.Config, ct);
            if (_cache!.TryGetValue(key, out var cached) && state.Equals(cached.State)) continue;
            _cache[key] = new CachedService(state, found.Config);
            changed = true;
        }
        _auditCursor = (_auditCursor + audited) % owned.Count;
        LastAudit = audited;
        if (changed) _cacheVersion++;
    }

    private ServiceState ReadServers(ServiceKey key, ServiceConfig config, CancellationToken ct)
    {
        var destinations = _ipvs.GetDestinations(key, ct);
        var servers = new Dictionary<RealServerKey, RealServerConfig>(destinations.Count);
        foreach (var d in destinations) servers[d.Key] = d.Config;
        return new ServiceState(key, config, servers);
    }

    private void RememberAdopted(IEnumerable<ServiceKey> owned, DataplaneState desired)
    {
        if (_options.OwnWholeTable) return;
        foreach (var key in owned)
            if (desired.Services.ContainsKey(key)) _owned.Add(key);
        SaveOwned();
    }

    // ---- writing ---------------------------------------------------------------------------------

    private IReadOnlyList<Exception?> Apply(IReadOnlyList<Operation> operations, CancellationToken ct)
    {
        var errors = new Exception?[operations.Count];
        if (operations.Count == 0) return errors;
        using var batch = _ipvs.CreateBatch(operations.Count);
        var positions = new List<int>(operations.Count); // batch index → operation index
        for (var i = 0; i < operations.Count; i++)
        {
            try
            {
                Encode(batch, operations[i]);
                positions.Add(i);
            }
            catch (ArgumentException e)
            {
                // A value the kernel cannot hold (the store validated it, but a dataplane must not trust that).
                errors[i] = new DataplaneException($"{operations[i]}: {e.Message}", e);
            }
        }

        NetlinkBatchResult result;
        try
        {
            result = _ipvs.Execute(batch, ct: ct);
        }
        catch (Exception e) when (e is NetlinkException or NetlinkTimeoutException or NetlinkDecodeException or IOException)
        {
            // The outcome of some requests is unknown: read the kernel whole next time.
            _cache = null;
            foreach (var i in positions) errors[i] = new DataplaneException($"{operations[i]}: {e.Message}", e);
            return errors;
        }
        KernelWrites += batch.Count;
        foreach (var failure in result.Failures)
        {
            var i = positions[failure.Index];
            errors[i] = new DataplaneException($"{operations[i]}: {failure.Error.Message}", failure.Error);
        }

        for (var i = 0; i < operations.Count; i++)
        {
            if (errors[i] is null) Record(operations[i]);
        }
        if (result.Failures.Count > 0 || positions.Count < operations.Count) _cache = null;
        SaveOwned();
        return errors;
    }

    private static void Encode(IpvsBatch batch, Operation op)
    {
        switch (op)
        {
            case AddService a: batch.NewService(a.Service, a.Config); break;
            case UpdateService u: batch.SetService(u.Service, u.Config); break;
            case DeleteService d: batch.DeleteService(d.Service); break;
            case AddServer a: batch.NewDestination(a.Service, a.Server, a.Config); break;
            case UpdateServer u: batch.SetDestination(u.Service, u.Server, u.Config); break;
            case DeleteServer d: batch.DeleteDestination(d.Service, d.Server); break;
            default: throw new ArgumentException($"unknown operation {op}", nameof(op));
        }
    }

    /// <summary>Keeps the cache and the ownership record in step with a write the kernel accepted.</summary>
    private void Record(Operation op)
    {
        _cacheVersion++;
        switch (op)
        {
            case AddService a:
                _owned.Add(a.Service);
                _cache?[a.Service] = new CachedService(new ServiceState(a.Service, a.Config, new Dictionary<RealServerKey, RealServerConfig>()), a.Config);
                return;
            case DeleteService d:
                _owned.Remove(d.Service);
                _cache?.Remove(d.Service);
                return;
        }
        if (_cache is null || !_cache.TryGetValue(op.Service, out var cached) || cached.State is null)
        {
            _cache = null;
            return;
        }
        var state = cached.State;
        switch (op)
        {
            case UpdateService u:
                _cache[op.Service] = new CachedService(state with { Config = u.Config }, u.Config);
                break;
            case AddServer or UpdateServer or DeleteServer:
                var servers = state.Servers.ToDictionary();
                if (op is AddServer add) servers[add.Server] = add.Config;
                else if (op is UpdateServer update) servers[update.Server] = update.Config;
                else servers.Remove(((DeleteServer)op).Server);
                _cache[op.Service] = cached with { State = state with { Servers = servers } };
                break;
        }
    }

    private void SaveOwned()
    {
        if (_owned.Save() is { } problem) LogOwnershipFileProblem(problem);
    }

    // ---- counters and sysctls ----------------------------------------------------------------------

    public Task<IReadOnlyList<ServiceCounters>> ReadCountersAsync(CancellationToken ct) =>
        Task.Run<IReadOnlyList<ServiceCounters>>(() =>
        {
            HashSet<ServiceKey> owned;
            lock (_lock)
            {
                owned = _options.OwnWholeTable || _cache is null
                    ? []
                    : _cache.Where(kv => kv.Value.State is not null).Select(kv => kv.Key).ToHashSet();
            }
            var result = new List<ServiceCounters>();
            foreach (var s in _ipvs.GetServices(ct))
            {
                if (!_options.OwnWholeTable && !owned.Contains(s.Key)) continue;
                var servers = _ipvs.GetDestinations(s.Key, ct)
                    .Select(d => new ServerCounters(d.Key, d.ActiveConnections, d.InactiveConnections, Totals(d.Stats)))
                    .ToList();
                result.Add(new ServiceCounters(s.Key, Totals(s.Stats), servers));
            }
            return result;
        }, ct);

    private static TrafficCounters Totals(IpvsStats s) => new(s.Connections, s.InPackets, s.OutPackets, s.InBytes, s.OutBytes);

    private void CheckSysctls(DataplaneState desired)
    {
        var masq = desired.Services.Values.Any(s => s.Servers.Values.Any(c => c.Forward == ForwardMethod.Masq));
        var sysctls = IpvsSysctls.Check(_options.ManageSysctls, masq, _options.NetworkNamespace);
        _sysctls = sysctls;
        _warnings = sysctls.Where(s => s.Drifted)
            .Select(s => $"sysctl {s.Name} is {s.Have ?? "unreadable"}, want {s.Want}: {s.Why}" +
                         (s.Managed ? " (setting it failed)" : " (start with --manage-sysctls to set it)"))
            .ToList();
        var report = string.Join("\n", _warnings);
        if (report == _lastSysctlReport) return; // log a drift once, not every pass
        _lastSysctlReport = report;
        foreach (var w in _warnings) LogSysctlDrift(w);
    }

    public void Dispose() => _ipvs.Dispose();

    [LoggerMessage(EventId = 300, Level = LogLevel.Warning, Message = "IPVS ownership record: {Problem}")]
    private partial void LogOwnershipFileProblem(string problem);

    [LoggerMessage(EventId = 301, Level = LogLevel.Warning, Message = "{Drift}")]
    private partial void LogSysctlDrift(string drift);
}
