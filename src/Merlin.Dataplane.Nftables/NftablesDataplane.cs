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
/// Every change set is one nftables transaction (libnftables in the process) holding only what
/// changed. The programmed
/// state is kept in the kernel too (a <c>state</c> set of records, and a <c>marker</c> set whose
/// comment is a hash of everything programmed), so a restarted daemon adopts the tables without
/// rewriting them. A resync asks the kernel for its ruleset generation (one netlink message); only
/// if someone else committed a transaction since our last look does it read our tables' chains,
/// rules and set declarations (netlink, no elements), and it audits a budget of set elements per
/// pass in rotation. Anything changed behind our back is repaired in the same <see cref="ReadAsync"/>.
/// <see cref="ReadAsync"/> also follows the neighbour table: a DSR server's new or first MAC is
/// programmed there, since the planner does not know MACs.
/// </para>
/// </summary>
public sealed partial class NftablesDataplane : IDataplane, IDataplaneDiagnostics, IUnresolvedServers, IProgrammedTables, IDisposable
{
    private readonly NftablesOptions _options;
    private readonly INftables _nft;
    private readonly NftKernel? _ownNft;
    private readonly INeighbours _neighbours;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _gate = new(1, 1);

    private Programmed? _programmed;
    private readonly Dictionary<IPAddress, PhysicalAddress> _macs = new();
    private readonly HashSet<IPAddress> _tracked = new();
    private readonly Dictionary<IPAddress, long> _waitedFor = new();
    private PhysicalAddress? _ownMac;
    private readonly Dictionary<string, uint> _auditedAt = new(StringComparer.Ordinal);
    private int _auditCursor;
    private IReadOnlyList<NftablesIssue> _issues = [];
    private IReadOnlyList<string> _warnings = [];
    private IReadOnlyList<IPAddress> _unresolved = [];
    private bool _issuesChanged;
    private IReadOnlyList<ProgrammedTable> _tables = [];
    // md-table services' tables as last programmed, with the changes and slots moved since the start.
    private readonly Dictionary<ServiceKey, (MinimalDisruptionTable Table, long Changes, long Moved)> _tableHistory = new();

    /// <summary>What we believe the kernel holds.</summary>
    private sealed class Programmed
    {
        public required Dictionary<ServiceKey, ServiceState> Services;
        public required Layout.Layout Layout;
        /// <summary>The ruleset generation after our last write or check; 0 = unknown.</summary>
        public uint Generation;
        /// <summary>Table id → structure signature after our last write or check.</summary>
        public Dictionary<string, string> Signatures = new(StringComparer.Ordinal);
        /// <summary>Our tables as read (or read in part and patched) at <see cref="Generation"/>; null = unknown.</summary>
        public IReadOnlyList<KernelTable>? Tables;
    }

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
        _neighbours = neighbours ?? new NetlinkNeighbours(options);
        _logger = logger;
        _time = time;
        _ownMac = options.OwnMac;
    }

    public string Name => "nftables";

    /// <summary>md-table services are programmed from the table the API stored, not from Maglev (docs/architecture.md).</summary>
    public bool ProgramsStoredTables => true;

    /// <summary>
    /// Closes the netlink sockets kept open between passes (ours and libnftables'); they close
    /// themselves a second after their last use anyway. The tables stay programmed.
    /// </summary>
    public void Dispose() => _ownNft?.Dispose();

    /// <summary>Services and servers held in the state but not forwarded to, and why (unsupported, MAC unknown).</summary>
    public IReadOnlyList<NftablesIssue> Issues => _issues;

    /// <summary>The <see cref="Issues"/>, one line each, for <c>meradm status</c> and the dataplane_warnings gauge.</summary>
    public IReadOnlyList<string> Warnings => _warnings;

    /// <summary>DSR real servers whose MAC is not known yet: they hold no slot until their address resolves.</summary>
    public IReadOnlyList<IPAddress> UnresolvedServers => _unresolved;

    /// <summary>The md-table services' tables as programmed at the last pass (<c>meradm status</c>, the slots-moved metric).</summary>
    public IReadOnlyList<ProgrammedTable> Tables => Volatile.Read(ref _tables);

    /// <summary>Raised after <see cref="Issues"/> changed (after the read or apply that changed them returned its lock).</summary>
    public event EventHandler? IssuesChanged;

    /// <summary>nft transactions run so far (tests: an apply of what is already there runs none).</summary>
    public long Transactions { get; private set; }

    /// <summary>Repairs of changes made to our tables behind our back.</summary>
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
            using (Phases.Measure("neighbours")) await RefreshAsync(ct);
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
    /// object from <paramref name="before"/>, which is how the layout builder knows it need not
    /// format anything of it again.
    /// </summary>
    private static Dictionary<ServiceKey, ServiceState> Services(ServiceTable table, Dictionary<ServiceKey, ServiceState> before, IEnumerable<Operation> applied)
    {
        var touched = applied.Select(o => o.Service).ToHashSet();
        var result = new Dictionary<ServiceKey, ServiceState>(before.Count);
        foreach (var (key, state) in table.ToState().Services)
            result[key] = !touched.Contains(key) && before.TryGetValue(key, out var had) ? had : state;
        return result;
    }

    private (string Family, string Name)[] OurTables => [("netdev", _options.DsrTable), ("inet", _options.NatTable)];

    // ---- adopting what a previous run programmed ----

    private async Task AdoptAsync(CancellationToken ct)
    {
        await ReadOwnMacAsync(ct);
        var generation = await _nft.GenerationAsync(ct);
        var tables = await _nft.ReadTablesAsync(OurTables, ct);
        var dsr = tables.FirstOrDefault(t => t.Family == "netdev");
        var empty = Build(new Dictionary<ServiceKey, ServiceState>(), Assignment.Empty);
        if (dsr is null)
        {
            _programmed = new Programmed { Services = new(), Layout = empty };
            if (tables.Count > 0)
            {
                LogOrphan(string.Join(", ", tables.Select(t => $"{t.Family} {t.Name}")));
                await RewriteAsync(empty, ct);
            }
            else
            {
                Remember(generation, tables);
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
            _programmed = new Programmed { Services = new(), Layout = empty };
            await RewriteAsync(empty, ct);
            return;
        }

        foreach (var (address, mac) in decoded.Macs) _macs[address] = mac;
        var previous = new Assignment(decoded.Groups, new Dictionary<string, GroupInfo>(), decoded.ServiceIds, decoded.ServerIds) { ListIds = decoded.ListIds };
        var layout = Build(decoded.Services, previous);
        _programmed = new Programmed { Services = decoded.Services, Layout = layout };
        var mismatch = Mismatch(tables, layout.Ruleset);
        if (mismatch is null)
        {
            Remember(generation, tables);
            LogAdopted(decoded.Services.Count, decoded.Services.Values.Sum(s => s.Servers.Count));
        }
        else
        {
            LogAdoptRepair(mismatch);
            Repairs++;
            await RewriteAsync(layout, ct);
        }
        Report(layout);
    }

    // ---- checking and repairing ----

    private async Task VerifyAsync(CancellationToken ct)
    {
        var programmed = _programmed!;
        var generation = await _nft.GenerationAsync(ct);
        if (generation != programmed.Generation || programmed.Generation == 0)
        {
            // Someone committed a transaction (or we lost track): is it ours to worry about?
            var tables = await _nft.ReadTablesAsync(OurTables, ct);
            var changed = StructureChanged(tables, programmed);
            if (changed is not null)
            {
                LogTampered(changed);
                Repairs++;
                await RewriteAsync(programmed.Layout, ct);
                return;
            }
            programmed.Generation = generation;
            programmed.Tables = tables;
        }
        await AuditAsync(generation, ct);
    }

    /// <summary>Null if our tables are as we left them (same signatures), else what differs.</summary>
    private string? StructureChanged(IReadOnlyList<KernelTable> tables, Programmed programmed)
    {
        foreach (var table in programmed.Layout.Ruleset.Tables)
        {
            var kernel = tables.FirstOrDefault(t => t.Family == table.Family && t.Name == table.Name);
            if (kernel is null) return $"table {table.Id} is gone";
            if (!programmed.Signatures.TryGetValue(table.Id, out var signature)) return Mismatch(tables, programmed.Layout.Ruleset) ?? $"table {table.Id} was never checked";
            if (kernel.Signature() != signature) return Mismatch(tables, programmed.Layout.Ruleset) ?? $"table {table.Id} was rewritten (handles or rule bodies changed)";
        }
        foreach (var kernel in tables)
            if (programmed.Layout.Ruleset.Table(kernel.Family, kernel.Name) is null) return $"table {kernel.Family} {kernel.Name} exists but holds nothing of ours";
        return null;
    }

    /// <summary>
    /// Null if the kernel's tables have the chains, rules (by comment, in order) and sets that
    /// <paramref name="ruleset"/> declares, else the first difference. Rule bodies are not
    /// compared here (the kernel's bytes are not the text we wrote); signatures taken right after
    /// our own writes cover them.
    /// </summary>
    internal static string? Mismatch(IReadOnlyList<KernelTable> tables, NftRuleset ruleset)
    {
        foreach (var kernel in tables)
            if (ruleset.Table(kernel.Family, kernel.Name) is null) return $"table {kernel.Family} {kernel.Name} should not exist";
        foreach (var table in ruleset.Tables)
        {
            var kernel = tables.FirstOrDefault(t => t.Family == table.Family && t.Name == table.Name);
            if (kernel is null) return $"table {table.Id} is missing";
            // By name, once: a table holds thousands of chains and sets.
            var kernelChains = new Dictionary<string, KernelChain>(StringComparer.Ordinal);
            foreach (var c in kernel.Chains) kernelChains.TryAdd(c.Name, c);
            var kernelSets = new Dictionary<string, KernelSet>(StringComparer.Ordinal);
            foreach (var x in kernel.Sets) kernelSets.TryAdd(x.Name, x);
            foreach (var chain in table.Chains.Values)
            {
                var k = kernelChains.GetValueOrDefault(chain.Name);
                if (k is null) return $"chain {table.Id} {chain.Name} is missing";
                if ((chain.Base is null) != (k.Hook is null)) return $"chain {table.Id} {chain.Name} is {(k.Hook is null ? "not " : "")}a base chain";
                if (chain.Base is not null && chain.Base.Contains("device", StringComparison.Ordinal) && !chain.Base.Contains($"device \"{k.Device}\"", StringComparison.Ordinal))
                    return $"chain {table.Id} {chain.Name} hooks device {k.Device}";
                if (!SameComments(chain.Rules, k.Rules)) return $"chain {table.Id} {chain.Name} holds {k.Rules.Count} rules, not the {chain.Rules.Count} we wrote";
            }
            foreach (var k in kernel.Chains)
                if (!table.Chains.ContainsKey(k.Name)) return $"chain {table.Id} {k.Name} is not ours";
            foreach (var set in table.Sets.Values)
            {
                var k = kernelSets.GetValueOrDefault(set.Name);
                if (k is null) return $"set {table.Id} {set.Name} is missing";
                if (set.Name == LayoutBuilder.MarkerSet && !set.Declaration.Contains($"comment \"{k.Comment}\"", StringComparison.Ordinal))
                    return $"the generation marker says \"{k.Comment}\", not what we wrote";
                if (set.Dynamic && !ScriptRenderer.Matches(k, set)) return $"set {table.Id} {set.Name} is declared differently";
            }
            foreach (var k in kernel.Sets)
                if (!k.Anonymous && !table.Sets.ContainsKey(k.Name)) return $"set {table.Id} {k.Name} is not ours";
        }
        return null;
    }

    private static bool SameComments(IReadOnlyList<string> rules, IReadOnlyList<KernelRule> kernel)
    {
        if (rules.Count != kernel.Count) return false;
        for (int i = 0; i < rules.Count; i++)
            if (!string.Equals(CommentOf(rules[i]), kernel[i].Comment, StringComparison.Ordinal)) return false;
        return true;
    }

    internal static string? CommentOf(string rule)
    {
        const string marker = " comment \"";
        int at = rule.LastIndexOf(marker, StringComparison.Ordinal);
        return at < 0 ? null : rule[(at + marker.Length)..^1];
    }

    /// <summary>
    /// Compares some of our sets' elements with what we wrote, in rotation, up to the budget; a set
    /// that differs gets the missing elements added and the wrong ones deleted. Sets are checked
    /// again only after a transaction of someone else (the generation moved).
    /// </summary>
    private async Task AuditAsync(uint generation, CancellationToken ct)
    {
        var programmed = _programmed!;
        var sets = programmed.Layout.Ruleset.Tables
            .SelectMany(t => t.OrderedSets.Where(s => !s.Dynamic && s.Name != LayoutBuilder.MarkerSet).Select(s => (Table: t, Set: s)))
            .ToList();
        if (sets.Count == 0) return;
        int budget = _options.AuditElementsPerPass;
        int start = _auditCursor % sets.Count;
        for (int n = 0; n < sets.Count && budget > 0; n++)
        {
            var (table, set) = sets[(start + n) % sets.Count];
            var id = $"{table.Id} {set.Name}";
            if (_auditedAt.TryGetValue(id, out var at) && at == generation) continue;
            budget -= Math.Max(1, set.Content.Count);
            var json = await _nft.ListSetJsonAsync(set.Kind, table.Family, table.Name, set.Name, ct);
            if (json is null)
            {
                LogTampered($"{set.Kind} {id} is gone");
                Repairs++;
                await RewriteAsync(programmed.Layout, ct);
                return;
            }
            var kernel = KeyedContent.Of(NftJson.Elements(json));
            var (delete, add) = SetContent.Diff(kernel, set.Content);
            if (delete.Count + add.Count > 0)
            {
                LogElementsTampered(id, delete.Count, add.Count);
                Repairs++;
                var script = ScriptRenderer.DiffScript(
                    new NftRuleset([table with { Sets = new Dictionary<string, NftSet> { [set.Name] = set with { Content = kernel } }, Chains = new Dictionary<string, NftChain>() }]),
                    new NftRuleset([table with { Sets = new Dictionary<string, NftSet> { [set.Name] = set }, Chains = new Dictionary<string, NftChain>() }]));
                await RunAsync(script, ct);
                var after = await _nft.GenerationAsync(ct);
                programmed.Generation = after;
                programmed.Tables = await _nft.ReadTablesAsync(OurTables, ct);
                programmed.Signatures = Signatures(programmed.Tables);
                generation = after;
            }
            _auditedAt[id] = generation;
            _auditCursor = (start + n + 1) % sets.Count;
        }
    }

    // ---- neighbours ----

    private async Task ReadOwnMacAsync(CancellationToken ct)
    {
        if (_options.OwnMac is not null || _options.Interface is null) return;
        // A failed read keeps the MAC we knew: a hiccup of the kernel read must not take DSR down.
        _ownMac = await _neighbours.LinkAddressAsync(_options.Interface, ct) ?? _ownMac;
    }

    /// <summary>Follows the interface's MAC and the neighbour table; re-renders what a changed MAC touches.</summary>
    private async Task RefreshAsync(CancellationToken ct)
    {
        if (_options.Interface is not { } device) return;
        var programmed = _programmed!;
        var own = _ownMac;
        await ReadOwnMacAsync(ct);
        bool changed = !Equals(own, _ownMac);
        var addresses = programmed.Layout.DsrAddresses;
        if (addresses.Count > 0)
        {
            await TrackAsync(addresses, device, ct);
            var neighbours = await _neighbours.ReadAsync(device, ct);
            foreach (var address in addresses)
            {
                if (!neighbours.TryGetValue(address, out var mac)) continue;   // keep the last MAC we knew
                if (_macs.TryGetValue(address, out var known) && known.Equals(mac)) continue;
                if (_macs.ContainsKey(address)) LogMacChanged(address, _macs[address], mac);
                _macs[address] = mac;
                changed = true;
            }
        }
        if (changed) await FlushAsync(programmed.Services, ct);
    }

    private async Task TrackAsync(IReadOnlyList<IPAddress> addresses, string device, CancellationToken ct)
    {
        var fresh = addresses.Where(a => !_tracked.Contains(a)).ToList();
        if (fresh.Count == 0) return;
        try
        {
            await _neighbours.TrackAsync(fresh, device, ct);
            _tracked.UnionWith(fresh);
        }
        catch (IOException e)
        {
            LogTrackFailed(e.Message);
        }
    }

    /// <summary>
    /// Looks the new layout's unknown MACs up, starts their resolution, and waits a little for them
    /// (<see cref="NftablesOptions.ResolveWait"/>, once per address a minute, so a server that does
    /// not answer does not slow every apply down).
    /// </summary>
    private async Task ResolveAsync(Layout.Layout layout, CancellationToken ct)
    {
        if (_options.Interface is not { } device) return;
        await TrackAsync(layout.DsrAddresses, device, ct);
        var now = _time.GetTimestamp();
        var wait = layout.Unresolved.Where(a => !_waitedFor.TryGetValue(a, out var t) || _time.GetElapsedTime(t, now) > TimeSpan.FromMinutes(1)).ToList();
        foreach (var a in wait) _waitedFor[a] = now;
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var neighbours = await _neighbours.ReadAsync(device, ct);
            foreach (var a in layout.DsrAddresses)
                if (neighbours.TryGetValue(a, out var mac)) _macs[a] = mac;
            if (wait.All(_macs.ContainsKey) || deadline.Elapsed >= _options.ResolveWait) return;
            await Task.Delay(TimeSpan.FromMilliseconds(50), _time, ct);
        }
    }

    // ---- writing ----

    private Layout.Layout Build(IReadOnlyDictionary<ServiceKey, ServiceState> services, Assignment previous)
    {
        using var _ = Phases.Measure("build");
        return LayoutBuilder.Build(new LayoutInput(services, _macs, _ownMac, previous), _options, Phases);
    }

    /// <summary>Programs <paramref name="services"/>: one transaction with what differs from what the kernel holds.</summary>
    private async Task FlushAsync(Dictionary<ServiceKey, ServiceState> services, CancellationToken ct)
    {
        var programmed = _programmed!;
        var layout = Build(services, programmed.Layout.Assignment);
        if (layout.Unresolved.Count > 0)
        {
            await ResolveAsync(layout, ct);
            layout = Build(services, programmed.Layout.Assignment);
        }
        NftScript script;
        using (Phases.Measure("render")) script = ScriptRenderer.DiffScript(programmed.Layout.Ruleset, layout.Ruleset, Staging);
        if (!script.IsEmpty)
        {
            var before = await _nft.GenerationAsync(ct);
            int commits;
            try
            {
                commits = await RunAsync(script, ct);
            }
            catch (DataplaneException e) when (StateMismatch(e.Message))
            {
                // The kernel does not hold what we believe (changed behind our back since the last
                // check): replace whatever is there instead of editing it.
                LogDiffFailed(e.Message);
                await RewriteAsync(layout, ct, services);
                return;
            }
            await AfterWriteAsync(layout, services, before, commits, ct);
        }
        else
        {
            programmed.Services = services;
            programmed.Layout = layout;
        }
        using (Phases.Measure("neighbours")) await ForgetAsync(programmed.Layout, ct);
        Report(layout);
    }

    /// <summary>Replaces our tables, whatever they hold, with <paramref name="layout"/>; pinned flows survive.</summary>
    private async Task RewriteAsync(Layout.Layout layout, CancellationToken ct, Dictionary<ServiceKey, ServiceState>? services = null)
    {
        var programmed = _programmed!;
        var existing = await _nft.ReadTablesAsync(OurTables, ct);
        var script = ScriptRenderer.RewriteScript(existing, layout.Ruleset, Staging);
        var before = await _nft.GenerationAsync(ct);
        int commits = script.IsEmpty ? 0 : await RunAsync(script, ct);
        _auditedAt.Clear();
        await AfterWriteAsync(layout, services ?? programmed.Services, before, commits, ct, rewrite: true);
        Report(layout);
    }

    /// <summary>What we know of the kernel after our write of <paramref name="commits"/> transactions, which started at generation <paramref name="before"/>.</summary>
    private async Task AfterWriteAsync(Layout.Layout layout, Dictionary<ServiceKey, ServiceState> services, uint before, int commits, CancellationToken ct, bool rewrite = false)
    {
        var programmed = _programmed!;
        bool alone = before == programmed.Generation;
        // Sets this transaction wrote in full: as long as nobody else committed in between, the
        // kernel holds exactly what we wrote, so they need no audit.
        var written = layout.Ruleset.Tables
            .SelectMany(t => t.Sets.Values.Where(s => !s.Dynamic && (rewrite || programmed.Layout.Ruleset.Table(t.Family, t.Name)?.Sets.GetValueOrDefault(s.Name) is not { } old
                || old.Kind != s.Kind || old.Declaration != s.Declaration)).Select(s => $"{t.Id} {s.Name}"))
            .ToList();
        var previous = programmed.Layout.Ruleset;
        var known = programmed.Tables;
        programmed.Services = services;
        programmed.Layout = layout;
        uint after;
        using (Phases.Measure("read back: generation")) after = await _nft.GenerationAsync(ct);
        // Only our transaction since the tables were last read: read back just what it declared
        // anew (new handles), not the thousands of chains and sets it did not touch.
        IReadOnlyList<KernelTable> tables;
        bool onlyOurs = alone && after == before + (uint)commits;
        if (!rewrite && onlyOurs && known is not null)
        {
            using var _ = Phases.Measure("read back: what changed");
            tables = await ReadChangedAsync(known, previous, layout.Ruleset, ct);
        }
        else
        {
            using var _ = Phases.Measure("read back: whole tables");
            tables = await _nft.ReadTablesAsync(OurTables, ct);
        }
        string? mismatched;
        using (Phases.Measure("read back: compare")) mismatched = Mismatch(tables, layout.Ruleset);
        if (mismatched is { } mismatch)
        {
            // Someone changed our tables between our write and this read, or we wrote something
            // the kernel keeps differently: the next resync repairs it.
            LogAfterWriteMismatch(mismatch);
            programmed.Generation = 0;
            programmed.Signatures = new(StringComparer.Ordinal);
            programmed.Tables = null;
            return;
        }
        programmed.Tables = tables;
        using (Phases.Measure("read back: signatures")) programmed.Signatures = Signatures(tables);
        if (onlyOurs)
        {
            // Nobody else committed in between: the sets we had checked are still as checked.
            foreach (var key in _auditedAt.Keys.ToList()) if (_auditedAt[key] == before) _auditedAt[key] = after;
            foreach (var id in written) _auditedAt[id] = after;
        }
        programmed.Generation = after;
    }

    /// <summary>
    /// Our tables after a transaction of ours from <paramref name="from"/> to <paramref name="to"/>,
    /// when <paramref name="known"/> is what they were before it: the chains and sets the
    /// transaction created, rewrote or deleted are read again by name (they have new handles), the
    /// rest is as it was. A table created or deleted, or a change to most of a table, is read whole.
    /// </summary>
    private async Task<IReadOnlyList<KernelTable>> ReadChangedAsync(IReadOnlyList<KernelTable> known, NftRuleset from, NftRuleset to, CancellationToken ct)
    {
        var result = new List<KernelTable>();
        foreach (var (family, name) in OurTables)
        {
            var had = known.FirstOrDefault(t => t.Family == family && t.Name == name);
            var old = from.Table(family, name);
            var now = to.Table(family, name);
            if (now is null && old is null && had is null) continue;
            if (now is null || old is null || had is null) return await _nft.ReadTablesAsync(OurTables, ct);
            var (chains, sets) = Touched(old, now);
            if (chains.Count + sets.Count > 64) return await _nft.ReadTablesAsync(OurTables, ct);
            if (chains.Count + sets.Count == 0) { result.Add(had); continue; }
            var parts = await _nft.ReadTablePartsAsync(family, name, chains, sets, ct);
            if (parts is null) return await _nft.ReadTablesAsync(OurTables, ct);
            result.Add(had with
            {
                Handle = parts.Handle,
                Flags = parts.Flags,
                Chains = had.Chains.Where(c => !chains.Contains(c.Name)).Concat(parts.Chains).ToList(),
                Sets = had.Sets.Where(s => !sets.Contains(s.Name)).Concat(parts.Sets).ToList(),
            });
        }
        return result;
    }

    /// <summary>
    /// The chains and sets a diff from <paramref name="from"/> to <paramref name="to"/> declares,
    /// deletes or rewrites (<see cref="ScriptRenderer"/>'s rules, <see cref="ScriptRenderer.Redeclared"/>: a chain is rewritten when its
    /// rules or hook change or a rule names a redeclared set; element changes touch no handle).
    /// </summary>
    internal static (HashSet<string> Chains, HashSet<string> Sets) Touched(NftTable from, NftTable to)
    {
        var sets = ScriptRenderer.Redeclared(from, to);
        foreach (var set in to.Sets.Values)
            if (!from.Sets.ContainsKey(set.Name)) sets.Add(set.Name);
        var chains = new HashSet<string>(StringComparer.Ordinal);
        foreach (var chain in from.Chains.Values)
            if (!to.Chains.TryGetValue(chain.Name, out var want) || !want.SameAs(chain) || sets.Any(chain.References)) chains.Add(chain.Name);
        foreach (var chain in to.Chains.Values)
            if (!from.Chains.ContainsKey(chain.Name)) chains.Add(chain.Name);
        return (chains, sets);
    }

    /// <summary>Errors that mean the kernel holds something other than we believe, not that the change itself is wrong.</summary>
    private static bool StateMismatch(string error) =>
        error.Contains("No such file or directory", StringComparison.Ordinal) ||
        error.Contains("File exists", StringComparison.Ordinal) ||
        error.Contains("Device or resource busy", StringComparison.Ordinal);

    private static Dictionary<string, string> Signatures(IReadOnlyList<KernelTable> tables) =>
        tables.ToDictionary(t => $"{t.Family} {t.Name}", t => t.Signature(), StringComparer.Ordinal);

    private void Remember(uint generation, IReadOnlyList<KernelTable> tables)
    {
        _programmed!.Generation = generation;
        _programmed.Signatures = Signatures(tables);
        _programmed.Tables = tables;
    }

    /// <summary>Whether new DSR Maglev maps are made over netlink ahead of the transaction (<see cref="NftablesOptions.StageMaps"/>).</summary>
    private bool Staging => _options.StageMaps && _nft.CanStage;

    /// <summary>
    /// Runs a script: its staged sets first (over netlink, unseen by the packet path until the
    /// script's rules name them), then the rest as one nft transaction. If that transaction fails, the
    /// staged sets are deleted again. Returns how many transactions were committed.
    /// </summary>
    private async Task<int> RunAsync(NftScript script, CancellationToken ct)
    {
        var started = Stopwatch.StartNew();
        var staging = StageResult.None;
        if (script.Staged.Count > 0)
        {
            try
            {
                using var _ = Phases.Measure("stage maps (netlink)");
                staging = await _nft.StageAsync(script.Staged, ct);
            }
            catch (NetlinkException e)
            {
                throw new DataplaneException($"the kernel refused the new maps: {e.Message}", e);
            }
            catch (FormatException e)
            {
                // A neighbour address that is no MAC (a value nft would refuse too): this change's fault, not the machine's.
                throw new DataplaneException($"the new maps cannot be written: {e.Message}", e);
            }
        }
        int commits = staging.Commits;
        try
        {
            if (script.HasNftCommands)
            {
                using var _ = Phases.Measure("nft (render, then libnftables)");
                await _nft.RunAsync(script, ct);
                commits++;
            }
        }
        catch (Exception e) when (e is NftException || script.Staged.Count > 0)
        {
            if (script.Staged.Count > 0)
            {
                try { await _nft.UnstageAsync(staging, script.Staged, CancellationToken.None); }
                catch (Exception u) when (u is not OperationCanceledException) { LogUnstageFailed(u.Message); }   // the next resync removes them
            }
            if (e is NftException refused) throw new DataplaneException($"nft refused the transaction: {refused.Message}", e);
            throw;
        }
        Transactions++;
        if (_logger.IsEnabled(LogLevel.Debug)) LogTransaction(script.Lines, started.Elapsed.TotalMilliseconds);
        return commits;
    }

    /// <summary>Drops the managed neighbour entries of addresses no DSR service uses any more.</summary>
    private async Task ForgetAsync(Layout.Layout layout, CancellationToken ct)
    {
        if (_options.Interface is not { } device) return;
        var gone = _tracked.Except(layout.DsrAddresses).ToList();
        if (gone.Count == 0) return;
        try { await _neighbours.UntrackAsync(gone, device, ct); }
        catch (IOException e) { LogTrackFailed(e.Message); }
        _tracked.ExceptWith(gone);
        foreach (var a in gone) _macs.Remove(a);
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
        _warnings = layout.Issues.Select(i => i.ToString()).ToList();
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

    [LoggerMessage(EventId = 402, Level = LogLevel.Warning, Message = "nftables: our tables were changed behind our back ({Reason}); repairing")]
    private partial void LogTampered(string reason);

    [LoggerMessage(EventId = 403, Level = LogLevel.Warning, Message = "nftables: {Set} was changed behind our back ({Deleted} wrong elements, {Added} missing); repairing")]
    private partial void LogElementsTampered(string set, int deleted, int added);

    [LoggerMessage(EventId = 404, Level = LogLevel.Error, Message = "nftables: the state records cannot be read ({Reason}); removing our tables so the next pass programs them anew")]
    private partial void LogStateUnreadable(string reason);

    [LoggerMessage(EventId = 405, Level = LogLevel.Warning, Message = "nftables: tables without state records ({Tables}); removing them")]
    private partial void LogOrphan(string tables);

    [LoggerMessage(EventId = 406, Level = LogLevel.Warning, Message = "nftables: an incremental change was refused ({Reason}); rewriting our tables")]
    private partial void LogDiffFailed(string reason);

    [LoggerMessage(EventId = 407, Level = LogLevel.Warning, Message = "nftables: after our write the kernel holds something else ({Reason}); the next resync repairs it")]
    private partial void LogAfterWriteMismatch(string reason);

    [LoggerMessage(EventId = 408, Level = LogLevel.Debug, Message = "nftables: transaction of {Lines} commands in {Milliseconds:0.0} ms")]
    private partial void LogTransaction(int lines, double milliseconds);

    [LoggerMessage(EventId = 415, Level = LogLevel.Warning, Message = "nftables: the maps made for a refused transaction could not be deleted ({Reason}); the next resync removes them")]
    private partial void LogUnstageFailed(string reason);

    [LoggerMessage(EventId = 409, Level = LogLevel.Warning, Message = "nftables: {Issue}")]
    private partial void LogIssue(string issue);

    [LoggerMessage(EventId = 416, Level = LogLevel.Error, Message = "nftables: {Issue}")]
    private partial void LogStoredTableReplaced(string issue);

    [LoggerMessage(EventId = 417, Level = LogLevel.Information, Message = "nftables: md-table of {Service} is now {Hash}: {Moved} of {Size} slots moved")]
    private partial void LogTableChanged(ServiceKey service, string hash, int moved, int size);

    [LoggerMessage(EventId = 410, Level = LogLevel.Information, Message = "nftables: resolved: {Issue}")]
    private partial void LogIssueCleared(string issue);

    [LoggerMessage(EventId = 411, Level = LogLevel.Information, Message = "nftables: MAC of {Address} changed from {Old} to {New}")]
    private partial void LogMacChanged(IPAddress address, PhysicalAddress old, PhysicalAddress @new);

    [LoggerMessage(EventId = 412, Level = LogLevel.Warning, Message = "nftables: neighbour resolution could not be started: {Reason}")]
    private partial void LogTrackFailed(string reason);
}
