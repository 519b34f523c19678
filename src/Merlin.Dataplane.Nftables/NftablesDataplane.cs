using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Dataplane.Nftables.Neighbours;
using Merlin.Hashing;
using Merlin.Model;
using Merlin.Linux;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// An <see cref="IDataplane"/> over the kernel's nftables: DSR (route servers) in a netdev ingress
/// chain, NAT (masq servers) in an inet prerouting chain, both through Maglev tables. It owns two
/// tables (<see cref="NftablesOptions.DsrTable"/>, <see cref="NftablesOptions.NatTable"/>) and
/// never touches anything else.
/// <para>
/// This type composes the parts and holds the lock: operations become services, services become a
/// layout (<see cref="LayoutBuilder"/>), and <see cref="TableWriter"/> writes the difference as one
/// nftables transaction. The programmed state is kept in the kernel too (a <c>state</c> set of
/// records, and a <c>marker</c> set whose comment is a hash of everything programmed), so a
/// restarted daemon adopts the tables without rewriting them. On every <see cref="ReadAsync"/>,
/// <see cref="TableAuditor"/> reports what was changed behind our back (cheaply: the ruleset
/// generation first, a budget of set elements per pass); each finding is repaired, counted in
/// <see cref="Repairs"/> and shown in <see cref="Warnings"/> for a while. <see cref="NeighbourTracker"/>
/// follows the neighbour table: a DSR server's new or first MAC is programmed there, since the
/// planner does not know MACs.
/// </para>
/// </summary>
public sealed partial class NftablesDataplane : IDataplane, IDataplaneDiagnostics, IUnresolvedServers, IProgrammedTables, IDisposable
{
    /// <summary>How long a repair stays in <see cref="Warnings"/>: long enough for an operator's next look at <c>meradm status</c>.</summary>
    internal static readonly TimeSpan RepairsShownFor = TimeSpan.FromMinutes(10);
    private const int MaxRepairsShown = 5;

    private readonly NftablesOptions _options;
    private readonly INftables _nft;
    private readonly NftKernel? _ownNft;
    private readonly NeighbourTracker _neighbours;
    private readonly TableAuditor _auditor;
    private readonly TableWriter _writer;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _gate = new(1, 1);
    // What one layout build hands to the next (pure work, never an id): a change formats only what it touched.
    private readonly BuildCache _buildCache = new();

    private ProgrammedState? _programmed;
    private IReadOnlyList<NftablesIssue> _issues = [];
    private IReadOnlyList<string> _issueLines = [];
    private readonly List<(DateTimeOffset At, string Reason)> _repairs = [];
    private IReadOnlyList<IPAddress> _unresolved = [];
    private bool _issuesChanged;
    private IReadOnlyList<ProgrammedTable> _tables = [];
    private readonly PinSweeper _pins;
    // md-table services' tables as last programmed, with the changes and slots moved since the start.
    private readonly Dictionary<ServiceKey, (MinimalDisruptionTable Table, long Changes, long Moved)> _tableHistory = new();

    public NftablesDataplane(NftablesOptions options, ILogger<NftablesDataplane> logger, TimeProvider? time = null)
        : this(options, null, null, logger, time ?? TimeProvider.System)
    {
    }

    internal NftablesDataplane(NftablesOptions options, INftables? nft, INeighbours? neighbours, ILogger logger, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        var runner = new ProcessRunner(options.NetworkNamespace, options.IpPath);
        if (nft is null) _nft = _ownNft = NftKernel.Open(options, runner, logger);
        else _nft = nft;
        _neighbours = new NeighbourTracker(options, neighbours ?? new NetlinkNeighbours(options), logger, time);
        _auditor = new TableAuditor(options, _nft);
        _writer = new TableWriter(options, _nft, logger, Phases);
        _pins = new PinSweeper(options, _nft, _gate, () => _programmed, logger, Phases);
        _logger = logger;
        _time = time;
    }

    public string Name => "nftables";

    /// <summary>md-table services are programmed from the table the API stored, not from Maglev (docs/architecture.md).</summary>
    public bool ProgramsStoredTables => true;

    /// <summary>
    /// Closes the netlink sockets kept open between passes (ours and libnftables'); they close
    /// themselves a second after their last use anyway. The tables stay programmed.
    /// </summary>
    public void Dispose()
    {
        _pins.Dispose();
        _ownNft?.Dispose();
    }

    /// <summary>The pin sweep running now, or a completed task (<see cref="PinSweeper"/>).</summary>
    internal Task PinSweepRunning => _pins.Running;

    /// <summary>Services and servers held in the state but not forwarded to, and why (unsupported, MAC unknown).</summary>
    public IReadOnlyList<NftablesIssue> Issues => _issues;

    /// <summary>
    /// The <see cref="Issues"/>, one line each, then the repairs of the last <see cref="RepairsShownFor"/>
    /// (what the auditor found changed behind our back), for <c>meradm status</c> and the dataplane_warnings gauge.
    /// </summary>
    public IReadOnlyList<string> Warnings
    {
        get
        {
            var now = _time.GetUtcNow();
            List<(DateTimeOffset At, string Reason)> recent;
            lock (_repairs) recent = _repairs.Where(r => now - r.At <= RepairsShownFor).ToList();
            if (recent.Count == 0) return _issueLines;
            return [.. _issueLines, .. recent.Select(r => $"repaired at {r.At.UtcDateTime:yyyy-MM-dd HH:mm:ss}Z: {r.Reason}")];
        }
    }

    /// <summary>DSR real servers whose MAC is not known yet: they hold no slot until their address resolves.</summary>
    public IReadOnlyList<IPAddress> UnresolvedServers => _unresolved;

    /// <summary>The md-table services' tables as programmed at the last pass (<c>meradm status</c>, the slots-moved metric).</summary>
    public IReadOnlyList<ProgrammedTable> Tables => Volatile.Read(ref _tables);

    /// <summary>Raised after <see cref="Issues"/> changed (after the read or apply that changed them returned its lock).</summary>
    public event EventHandler? IssuesChanged;

    /// <summary>nft transactions run so far (tests: an apply of what is already there runs none).</summary>
    public long Transactions => _writer.Transactions;

    /// <summary>Repairs of changes made to our tables behind our back (the recent ones are in <see cref="Warnings"/>).</summary>
    public long Repairs { get; private set; }

    /// <summary>Time spent per phase (the benchmark's breakdown).</summary>
    internal Phases Phases { get; } = new();

    /// <summary>What we believe the kernel holds (tests).</summary>
    internal NftRuleset? Ruleset => _programmed?.Layout.Ruleset;

    public async Task<DataplaneState> ReadAsync(CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        try
        {
            using (Phases.Measure("verify"))
            {
                if (_programmed is null) await AdoptAsync(ct);
                else await VerifyAsync(ct);
            }
            using (Phases.Measure("neighbours"))
                if (await _neighbours.RefreshAsync(_programmed!.Layout.DsrAddresses, ct)) await FlushAsync(_programmed.Services, ct);
            _pins.RequestUnlessClean();
            return new DataplaneState(new Dictionary<ServiceKey, ServiceState>(_programmed!.Services));
        }
        finally
        {
            _gate.Release();
            RaiseIssuesChanged();
        }
    }

    public async Task ApplyAsync(Operation operation, CancellationToken ct)
    {
        var errors = await ApplyAsync([operation], ct);
        if (errors[0] is { } error) throw error;
    }

    /// <summary>The whole plan as one transaction; if the kernel refuses it, operation by operation to find the culprits.</summary>
    public async Task<IReadOnlyList<Exception?>> ApplyAsync(IReadOnlyList<Operation> operations, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(operations);
        await _gate.WaitAsync(ct);
        try
        {
            if (_programmed is null) await AdoptAsync(ct);
            var errors = new Exception?[operations.Count];
            var plan = Phases.Measure("operations");
            var table = new ServiceTable(new DataplaneState(_programmed!.Services));
            for (int i = 0; i < operations.Count; i++)
            {
                try { table.Apply(operations[i]); }
                catch (InvalidOperationException e) { errors[i] = new DataplaneException(e.Message, e); }
            }
            plan.Dispose();
            if (errors.All(e => e is not null)) return errors;
            try
            {
                Dictionary<ServiceKey, ServiceState> services;
                using (Phases.Measure("operations")) services = Services(table, _programmed.Services, operations.Where((_, i) => errors[i] is null));
                await FlushAsync(services, ct);
                return errors;
            }
            catch (Exception e) when (e is not DataplaneException and not OperationCanceledException)
            {
                // Not the kernel refusing the change but the machine failing us (nft or ip missing,
                // netlink timeout): every operation failed for the same reason; the loop retries.
                for (int i = 0; i < errors.Length; i++) errors[i] ??= new DataplaneException($"nftables: {e.Message}", e);
                return errors;
            }
            catch (DataplaneException e) when (errors.Count(x => x is null) == 1)
            {
                errors[Array.IndexOf(errors, null)] = e;
                return errors;
            }
            catch (DataplaneException)
            {
                // Find which operations the kernel refuses; apply the others.
                for (int i = 0; i < operations.Count; i++)
                {
                    if (errors[i] is not null) continue;
                    var one = new ServiceTable(new DataplaneState(_programmed.Services));
                    try
                    {
                        one.Apply(operations[i]);
                        await FlushAsync(Services(one, _programmed.Services, [operations[i]]), ct);
                    }
                    catch (InvalidOperationException e) { errors[i] = new DataplaneException(e.Message, e); }
                    catch (DataplaneException e) { errors[i] = e; }
                    catch (Exception e) when (e is not OperationCanceledException) { errors[i] = new DataplaneException($"nftables: {e.Message}", e); }
                }
                return errors;
            }
        }
        finally
        {
            _gate.Release();
            RaiseIssuesChanged();
        }
    }

    /// <summary>
    /// The services after <paramref name="applied"/>: a service no operation names keeps its state
    /// object from <paramref name="before"/>, so the build cache knows at once (by reference, without
    /// comparing its servers) that nothing of it needs formatting again.
    /// </summary>
    private static Dictionary<ServiceKey, ServiceState> Services(ServiceTable table, Dictionary<ServiceKey, ServiceState> before, IEnumerable<Operation> applied)
    {
        var touched = applied.Select(o => o.Service).ToHashSet();
        var result = new Dictionary<ServiceKey, ServiceState>(before.Count);
        foreach (var (key, state) in table.ToState().Services)
            result[key] = !touched.Contains(key) && before.TryGetValue(key, out var had) ? had : state;
        return result;
    }

    // ---- adopting what a previous run programmed ----

    private async Task AdoptAsync(CancellationToken ct)
    {
        await _neighbours.ReadOwnMacAsync(ct);
        var generation = await _nft.GenerationAsync(ct);
        var tables = await _nft.ReadTablesAsync(_options.OurTables, ct);
        var dsr = tables.FirstOrDefault(t => t.Family == "netdev");
        var empty = Build(new Dictionary<ServiceKey, ServiceState>(), Assignment.Empty);
        if (dsr is null)
        {
            _programmed = new ProgrammedState { Services = new(), Layout = empty };
            if (tables.Count > 0)
            {
                LogOrphan(string.Join(", ", tables.Select(t => $"{t.Family} {t.Name}")));
                await RewriteAsync(empty, ct);
            }
            else
            {
                _programmed.Remember(generation, tables);
            }
            return;
        }

        StateRecords.Decoded decoded;
        try
        {
            var json = await _nft.ListSetJsonAsync("set", "netdev", _options.DsrTable, LayoutBuilder.StateSet, ct)
                ?? throw new FormatException("the state set is missing");
            decoded = StateRecords.Decode(NftJson.Comments(json));
        }
        catch (Exception e) when (e is FormatException or System.Text.Json.JsonException or KeyNotFoundException or InvalidOperationException)
        {
            LogStateUnreadable(e.Message);
            _programmed = new ProgrammedState { Services = new(), Layout = empty };
            await RewriteAsync(empty, ct);
            return;
        }

        _neighbours.Adopt(decoded.Macs);
        var previous = new Assignment(decoded.Groups, new Dictionary<string, GroupInfo>(), decoded.ServiceIds, decoded.ServerIds) { ListIds = decoded.ListIds };
        var layout = Build(decoded.Services, previous);
        _programmed = new ProgrammedState { Services = decoded.Services, Layout = layout };
        var mismatch = TableAuditor.Mismatch(tables, layout.Ruleset);
        if (mismatch is null)
        {
            _programmed.Remember(generation, tables);
            LogAdopted(decoded.Services.Count, decoded.Services.Values.Sum(s => s.Servers.Count));
        }
        else if (OlderMarker(dsr) is { } older
                 && TableAuditor.Mismatch(WithMarkerComment(tables, LayoutBuilder.MarkerComment(layout.Ruleset.Fingerprint(LayoutBuilder.MarkerSet))), layout.Ruleset) is null)
        {
            // Everything matches but the marker, which an older Merlin wrote in its own way: not tampering. The
            // kernel holds this layout with that marker; the diff to this one declares the marker set anew, nothing else.
            LogMarkerUpgraded(older);
            var dsrTable = layout.Ruleset.Table("netdev", _options.DsrTable)!;
            var held = layout with
            {
                Ruleset = new NftRuleset(layout.Ruleset.Tables.Select(t => ReferenceEquals(t, dsrTable)
                    ? t with { Sets = new Dictionary<string, NftSet>(t.Sets) { [LayoutBuilder.MarkerSet] = LayoutBuilder.Marker(older) } } : t).ToList()),
            };
            _programmed = new ProgrammedState { Services = decoded.Services, Layout = held };
            _programmed.Remember(generation, tables);
            await _writer.WriteAsync(_programmed, layout, decoded.Services, ct);
        }
        else
        {
            LogAdoptRepair(mismatch);
            Repaired(new TableDrift($"our tables do not match their state records ({mismatch})"));
            await RewriteAsync(layout, ct);
        }
        Report(layout);
    }

    /// <summary>The marker's comment if an older version of Merlin wrote it (another fingerprint), else null.</summary>
    private static string? OlderMarker(KernelTable dsr) =>
        dsr.Sets.FirstOrDefault(s => s.Name == LayoutBuilder.MarkerSet)?.Comment is { } comment
        && comment.StartsWith("merlin v", StringComparison.Ordinal) && !comment.StartsWith(LayoutBuilder.MarkerVersion + " ", StringComparison.Ordinal)
            ? comment : null;

    /// <summary>The kernel's tables with <paramref name="comment"/> on their marker in place of theirs.</summary>
    private static IReadOnlyList<KernelTable> WithMarkerComment(IReadOnlyList<KernelTable> tables, string comment) =>
        tables.Select(t => t.Family != "netdev" ? t
            : t with { Sets = t.Sets.Select(s => s.Name == LayoutBuilder.MarkerSet ? s with { Comment = comment } : s).ToList() }).ToList();

    // ---- checking and repairing ----

    /// <summary>Asks the auditor what differs from what we wrote, and repairs each finding it reports.</summary>
    private async Task VerifyAsync(CancellationToken ct)
    {
        var programmed = _programmed!;
        var (generation, drift) = await _auditor.CheckStructureAsync(programmed, ct);
        if (drift is not null)
        {
            LogTampered(drift.Reason);
            await RepairAsync(drift, ct);
            return;
        }
        await foreach (var found in _auditor.CheckElementsAsync(programmed, generation, ct))
        {
            if (found.Set is { } set) LogElementsTampered($"{set.Table.Id} {set.Set.Name}", found.Wrong, found.Missing);
            else LogTampered(found.Reason);
            await RepairAsync(found, ct);
            if (found.Set is null) return;
        }
    }

    private async Task RepairAsync(TableDrift drift, CancellationToken ct)
    {
        Repaired(drift);
        var programmed = _programmed!;
        if (drift is { Set: { } set, Kernel: { } kernel }) await _writer.RepairSetAsync(programmed, set.Table, set.Set, kernel, ct);
        else await RewriteAsync(programmed.Layout, ct);
    }

    /// <summary>Counts a repair and keeps it for <see cref="Warnings"/> a while, so <c>meradm status</c> shows that someone changed our tables.</summary>
    private void Repaired(TableDrift drift)
    {
        Repairs++;
        var now = _time.GetUtcNow();
        lock (_repairs)
        {
            _repairs.RemoveAll(r => now - r.At > RepairsShownFor);
            _repairs.Add((now, drift.Reason));
            if (_repairs.Count > MaxRepairsShown) _repairs.RemoveAt(0);
        }
        _issuesChanged = true;
    }

    // ---- writing ----

    private Layout.Layout Build(IReadOnlyDictionary<ServiceKey, ServiceState> services, Assignment previous)
    {
        using var _ = Phases.Measure("build");
        return LayoutBuilder.Build(new LayoutInput(services, _neighbours.Macs, _neighbours.OwnMac, previous) { MacsVersion = _neighbours.Version }, _options, _buildCache, Phases);
    }

    /// <summary>Programs <paramref name="services"/>: one transaction with what differs from what the kernel holds.</summary>
    private async Task FlushAsync(Dictionary<ServiceKey, ServiceState> services, CancellationToken ct)
    {
        var programmed = _programmed!;
        var before = programmed.Layout;
        var layout = Build(services, programmed.Layout.Assignment);
        if (layout.Unresolved.Count > 0)
        {
            await _neighbours.ResolveAsync(layout.DsrAddresses, layout.Unresolved, ct);
            layout = Build(services, programmed.Layout.Assignment);
        }
        if (await _writer.WriteAsync(programmed, layout, services, ct))
        {
            using (Phases.Measure("neighbours")) await _neighbours.ForgetAllButAsync(programmed.Layout.DsrAddresses, ct);
        }
        // A server that left its service keeps its pinned flows until they are deleted: in the background, so this
        // change is not held up by a dump of the flow maps.
        if (PinSweep.Departed(before.Pinned, layout.Pinned)) _pins.Request();
        Report(layout);
    }

    /// <summary>Replaces our tables, whatever they hold, with <paramref name="layout"/>; pinned flows survive.</summary>
    private async Task RewriteAsync(Layout.Layout layout, CancellationToken ct)
    {
        await _writer.RewriteAsync(_programmed!, layout, ct);
        Report(layout);
    }

    private void Report(Layout.Layout layout)
    {
        RecordTables(layout);
        var old = _issues.Select(i => i.ToString()).ToHashSet();
        var now = layout.Issues.Select(i => i.ToString()).ToHashSet();
        _unresolved = layout.Unresolved;
        if (old.SetEquals(now)) return;
        foreach (var issue in layout.Issues.Where(i => !old.Contains(i.ToString())))
        {
            if (issue.StoredTable) LogStoredTableReplaced(issue.ToString());
            else LogIssue(issue.ToString());
        }
        foreach (var gone in old.Where(o => !now.Contains(o))) LogIssueCleared(gone);
        _issues = layout.Issues;
        _issueLines = layout.Issues.Select(i => i.ToString()).ToList();
        _issuesChanged = true;
    }

    /// <summary>Counts what each programmed table change moved (a first table, at start or for a new service, moved nothing).</summary>
    private void RecordTables(Layout.Layout layout)
    {
        var seen = new HashSet<ServiceKey>();
        var tables = new List<ProgrammedTable>(layout.Tables.Count);
        foreach (var (service, table, problem) in layout.Tables)
        {
            seen.Add(service);
            var (changes, moved) = (0L, 0L);
            if (_tableHistory.TryGetValue(service, out var had))
            {
                (changes, moved) = (had.Changes, had.Moved);
                if (!ReferenceEquals(had.Table, table) && had.Table.Hash != table.Hash)
                {
                    int slots = MinimalDisruptionTable.SlotsMoved(had.Table, table);
                    (changes, moved) = (changes + 1, moved + slots);
                    LogTableChanged(service, table.HashText, slots, table.Size);
                }
            }
            _tableHistory[service] = (table, changes, moved);
            tables.Add(new ProgrammedTable(service, table.HashText, problem, changes, moved));
        }
        foreach (var gone in _tableHistory.Keys.Where(k => !seen.Contains(k)).ToList()) _tableHistory.Remove(gone);
        Volatile.Write(ref _tables, tables);
    }

    /// <summary>Outside the gate, so a handler may call back into the dataplane.</summary>
    private void RaiseIssuesChanged()
    {
        if (!_issuesChanged) return;
        _issuesChanged = false;
        IssuesChanged?.Invoke(this, EventArgs.Empty);
    }

    [LoggerMessage(EventId = 400, Level = LogLevel.Information, Message = "nftables: adopted the tables of a previous run ({Services} services, {Servers} servers)")]
    private partial void LogAdopted(int services, int servers);

    [LoggerMessage(EventId = 401, Level = LogLevel.Warning, Message = "nftables: our tables do not match their state records ({Reason}); rewriting them")]
    private partial void LogAdoptRepair(string reason);

    [LoggerMessage(EventId = 420, Level = LogLevel.Information, Message = "nftables: the tables were written by an older Merlin (marker \"{Marker}\"); writing this version's marker")]
    private partial void LogMarkerUpgraded(string marker);

    [LoggerMessage(EventId = 402, Level = LogLevel.Warning, Message = "nftables: our tables were changed behind our back ({Reason}); repairing")]
    private partial void LogTampered(string reason);

    [LoggerMessage(EventId = 403, Level = LogLevel.Warning, Message = "nftables: {Set} was changed behind our back ({Deleted} wrong elements, {Added} missing); repairing")]
    private partial void LogElementsTampered(string set, int deleted, int added);

    [LoggerMessage(EventId = 404, Level = LogLevel.Error, Message = "nftables: the state records cannot be read ({Reason}); removing our tables so the next pass programs them anew")]
    private partial void LogStateUnreadable(string reason);

    [LoggerMessage(EventId = 405, Level = LogLevel.Warning, Message = "nftables: tables without state records ({Tables}); removing them")]
    private partial void LogOrphan(string tables);

    [LoggerMessage(EventId = 409, Level = LogLevel.Warning, Message = "nftables: {Issue}")]
    private partial void LogIssue(string issue);

    [LoggerMessage(EventId = 416, Level = LogLevel.Error, Message = "nftables: {Issue}")]
    private partial void LogStoredTableReplaced(string issue);

    [LoggerMessage(EventId = 417, Level = LogLevel.Information, Message = "nftables: md-table of {Service} is now {Hash}: {Moved} of {Size} slots moved")]
    private partial void LogTableChanged(ServiceKey service, string hash, int moved, int size);

    [LoggerMessage(EventId = 410, Level = LogLevel.Information, Message = "nftables: resolved: {Issue}")]
    private partial void LogIssueCleared(string issue);

}
