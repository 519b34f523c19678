using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Merlin.Dataplane.Abstractions;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>What carries over from one layout to the next: record ids and which service uses which group.</summary>
internal sealed record Assignment(
    IReadOnlyDictionary<ServiceKey, string> ServiceGroups,
    IReadOnlyDictionary<string, GroupInfo> Groups,
    IReadOnlyDictionary<ServiceKey, uint> ServiceIds,
    IReadOnlyDictionary<(ServiceKey, RealServerKey), uint> ServerIds)
{
    public static readonly Assignment Empty = new(
        new Dictionary<ServiceKey, string>(), new Dictionary<string, GroupInfo>(),
        new Dictionary<ServiceKey, uint>(), new Dictionary<(ServiceKey, RealServerKey), uint>());

    /// <summary>
    /// The elements of every group's map and live set by content key: a group whose content did not
    /// change reuses them, so its Maglev table is not built again nor its elements hashed again.
    /// </summary>
    public IReadOnlyDictionary<string, GroupContent> Contents { get; init; } = new Dictionary<string, GroupContent>();

    /// <summary>The id of each service's server-list record (services without servers have none).</summary>
    public IReadOnlyDictionary<ServiceKey, uint> ListIds { get; init; } = new Dictionary<ServiceKey, uint>();

    /// <summary>
    /// The analysis of every server set of the layout (what it forwards to, its M, its content key,
    /// its state record texts), by the set's content: a set whose servers and MACs did not change
    /// is not analyzed again. Valid only for the options in <see cref="SetsFor"/>.
    /// </summary>
    public IReadOnlyDictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, LayoutBuilder.SetPlan>? Sets { get; init; }

    /// <summary>The options <see cref="Sets"/> were analyzed under (<see cref="LayoutBuilder.SetOptions"/>).</summary>
    public string? SetsFor { get; init; }

    // What a build keeps so the next one formats only what changed (null: nothing, e.g. after adoption).

    /// <summary>The services' keys in order.</summary>
    public IReadOnlyList<ServiceKey>? Order { get; init; }

    /// <summary>Per service: the state object the build saw, its server set's analysis, and what was made of them.</summary>
    public IReadOnlyDictionary<ServiceKey, ServiceMemo>? Memos { get; init; }

    /// <summary>Real server record body → id (with <see cref="Memos"/>, the ids every (service, server) had; replaces <see cref="ServerIds"/>).</summary>
    public IReadOnlyDictionary<string, uint>? ServerRecordIds { get; init; }

    /// <summary>Per server set: the record id of each of its servers, in the order of <see cref="LayoutBuilder.SetPlan.Bodies"/>.</summary>
    public IReadOnlyDictionary<LayoutBuilder.SetPlan, uint[]>? IdsOf { get; init; }

    /// <summary>Per server set: its record ids in order and the list record's text.</summary>
    public IReadOnlyDictionary<LayoutBuilder.SetPlan, (uint[] Ids, string Text)>? Members { get; init; }

    /// <summary>Server and list records by id: their text and elements.</summary>
    public IReadOnlyDictionary<uint, RecordText>? Texts { get; init; }

    /// <summary>Group chains by (name, shape), valid under <see cref="SetsFor"/>.</summary>
    public IReadOnlyDictionary<(string, string), NftChain>? Chains { get; init; }
}

/// <summary>What one build made of one service; the next build reuses it while the service's state object and server set analysis are the same.</summary>
internal sealed class ServiceMemo(ServiceState state, LayoutBuilder.SetPlan set)
{
    public ServiceState State { get; } = state;
    public LayoutBuilder.SetPlan Set { get; } = set;
    public LayoutBuilder.ServicePlan? Plan { get; init; }
    public ServiceRecord? Record { get; set; }
    public DispatchElement? Dispatch { get; set; }
}

/// <summary>A service's state record: its inputs besides the service and its elements.</summary>
internal sealed record ServiceRecord(uint Id, string? Group, uint? List, (string Key, string Element)[] Elements);

/// <summary>A server or list record: its text (without the id) and its elements.</summary>
internal sealed record RecordText(char Kind, string Body, (string Key, string Element)[] Elements);

/// <summary>A service's element of the dispatch map.</summary>
internal sealed record DispatchElement(string Group, string Variant, string Key, string Element);

/// <summary>A group's map elements and, for DSR, its live set.</summary>
internal sealed record GroupContent(SetContent Map, SetContent? Live);

/// <summary>A group of services that share one Maglev map: same kind, size and backends. <paramref name="Shape"/> is kind and size (what a map can be edited within).</summary>
internal sealed record GroupInfo(string Name, string Shape, string ContentKey);

/// <summary>Everything the builder needs besides the options; pure data.</summary>
internal sealed record LayoutInput(
    IReadOnlyDictionary<ServiceKey, ServiceState> Services,
    IReadOnlyDictionary<IPAddress, PhysicalAddress> Macs,
    PhysicalAddress? OwnMac,
    Assignment Previous);

/// <summary>A built layout: the ruleset, what to remember, and what could not be programmed.</summary>
internal sealed record Layout(
    NftRuleset Ruleset,
    Assignment Assignment,
    IReadOnlyList<NftablesIssue> Issues,
    IReadOnlyList<IPAddress> Unresolved,
    IReadOnlyList<IPAddress> DsrAddresses)
{
    /// <summary>The md-table services' tables as this layout programs them, in service order.</summary>
    public IReadOnlyList<LayoutTable> Tables { get; init; } = [];
}

/// <summary>
/// An md-table service's table as a layout programs it: the stored one, or — when <paramref name="Problem"/> says why
/// the stored one could not be used — the node's recomputation.
/// </summary>
internal sealed record LayoutTable(ServiceKey Service, MinimalDisruptionTable Table, string? Problem);

/// <summary>
/// Builds the ruleset for a set of services. Pure: the same input gives the same ruleset, text for
/// text. Decisions (see the project README for the why):
/// <list type="bullet">
/// <item>A service is DSR when it has route servers, NAT when it has masq servers and no route one;
/// tunnel servers, firewall-mark services and masq servers mixed into a DSR service are reported.</item>
/// <item>M = <see cref="MaglevTable.ChooseSize"/> of the servers the service forwards to, drained and
/// unresolved ones included, so every node computes the same M from the same store (a size that
/// depended on history would differ between nodes and move flows at failover).</item>
/// <item>Services with the same kind, M and backends (identity, weight, MAC) share one map, one live
/// set and one chain per hash variant; a dispatch verdict map sends each service to its chain.</item>
/// <item>The hash key is <c>saddr . sport</c>, or <c>saddr</c> alone for sh/mh without their port flag
/// and for persistent services (persistence is per client address; a netmask is not applied).</item>
/// </list>
/// </summary>
internal static class LayoutBuilder
{
    public const string MarkerSet = "marker";
    public const string StateSet = "state";
    public const uint FullRange = uint.MaxValue;

    public static Layout Build(LayoutInput input, NftablesOptions options, Phases? phases = null)
    {
        var step = phases?.Measure("build: plans");
        var issues = new List<NftablesIssue>();
        var unresolved = new SortedSet<IPAddress>(Comparer<IPAddress>.Create(AddressOrder.Compare));
        var dsrAddresses = new HashSet<IPAddress>();
        var text = new TextCache();
        var (services, sameOrder) = InOrder(input.Services, input.Previous.Order);
        bool dsrPossible = options.Interface is not null && input.OwnMac is not null;

        // 1. What each service forwards to. Services with the same servers (the ingress case: all of
        // them) share one analysis of them, and a set analyzed by the previous build under the same
        // options is reused while its servers' MACs are the same. A service whose state is the very
        // object the previous build saw, with the same analysis, keeps its plan (nothing of it is
        // formatted again).
        var plans = new List<ServicePlan>();
        var sets = new Dictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, SetPlan>(ServerSetComparer.Instance);
        var setOptions = SetOptions(options, input.OwnMac);
        var cached = input.Previous.SetsFor == setOptions ? input.Previous.Sets : null;
        // Memos hold what each service had last time (its ids follow from them under any options);
        // their plans and sets are reused only under the same options.
        var previousMemos = input.Previous.Memos;
        bool reusable = input.Previous.SetsFor == setOptions;
        var setOf = new SetPlan[services.Count];
        var memos = new ServiceMemo[services.Count];
        var before = new ServiceMemo?[services.Count];
        var macsStill = new Dictionary<SetPlan, bool>(ReferenceEqualityComparer.Instance);
        var seen = new Dictionary<SetPlan, IReadOnlyDictionary<RealServerKey, RealServerConfig>>(ReferenceEqualityComparer.Instance);
        for (int k = 0; k < services.Count; k++)
        {
            var service = services[k];
            SetPlan? set = null;
            ServiceMemo? memo = null;
            if (previousMemos is not null && previousMemos.TryGetValue(service.Key, out memo))
            {
                before[k] = memo;
                if (!macsStill.TryGetValue(memo.Set, out var still)) macsStill[memo.Set] = still = memo.Set.SameMacs(input.Macs);
                if (reusable && ReferenceEquals(memo.State, service) && still) set = memo.Set;
                else memo = null;
            }
            if (set is null && !sets.TryGetValue(service.Servers, out set))
            {
                if (cached is null || !cached.TryGetValue(service.Servers, out set) || !set.SameMacs(input.Macs))
                    set = Analyze(service.Servers, input.Macs, options, dsrPossible, text);
                sets[service.Servers] = set;
            }
            setOf[k] = set;
            if (seen.TryAdd(set, service.Servers) && set.Dsr && dsrPossible)
            {
                dsrAddresses.UnionWith(set.Addresses);
                unresolved.UnionWith(set.Unresolved);
            }
            var plan = Plan(service, set, options, dsrPossible, issues, memo?.Plan);
            memos[k] = new ServiceMemo(service, set) { Plan = plan };
            if (plan is not null) plans.Add(plan);
        }
        foreach (var (set, servers) in seen) sets.TryAdd(servers, set);

        step?.Dispose();
        step = phases?.Measure("build: groups");
        // 2. Groups: one per distinct content, reusing the previous group a content's services used.
        var assignment = GroupPlanner.Assign(plans, input.Previous);
        var serviceGroups = new Dictionary<ServiceKey, string>();
        foreach (var plan in plans) serviceGroups[plan.Key] = assignment[plan.ContentKey];

        step?.Dispose();
        step = phases?.Measure("build: records");
        // 3. State records, their ids kept across layouts so an unchanged record is never rewritten.
        var records = StateRecordPlanner.Plan(services, setOf, before, memos, input, serviceGroups);

        var groups = new Dictionary<string, GroupInfo>();
        foreach (var plan in plans) groups[assignment[plan.ContentKey]] = new GroupInfo(assignment[plan.ContentKey], plan.Shape, plan.ContentKey);

        step?.Dispose();
        step = phases?.Measure("build: maps");
        // 4. Tables.
        var contents = new Dictionary<string, GroupContent>(StringComparer.Ordinal);
        var fresh = new List<ServicePlan>();
        foreach (var plan in plans)
        {
            if (contents.ContainsKey(plan.ContentKey)) continue;
            if (input.Previous.Contents.TryGetValue(plan.ContentKey, out var had)) contents[plan.ContentKey] = had;
            else { contents[plan.ContentKey] = null!; fresh.Add(plan); }
        }
        // New maps: their Maglev tables and content hashes are independent of one another; with
        // many (a first build of 1,000 maps) they are made on every core.
        var made = new GroupContent[fresh.Count];
        void Make(int i)
        {
            var plan = fresh[i];
            made[i] = new GroupContent(TableRenderer.Slots(plan), plan.Dsr ? KeyedContent.Of(plan.Backends.Select(b => (b.Mac!, b.Mac!))) : null);
            _ = made[i].Map.Hash;
        }
        if (fresh.Count >= 64) Parallel.For(0, fresh.Count, Make);
        else for (int i = 0; i < fresh.Count; i++) Make(i);
        for (int i = 0; i < fresh.Count; i++) contents[fresh[i].ContentKey] = made[i];
        step?.Dispose();
        step = phases?.Measure("build: tables");
        // The dispatch maps' elements: kept from the previous build while the service goes to the same chain.
        var dispatch = new List<(ServicePlan Plan, (string Key, string Element) Element)>(plans.Count);
        for (int k = 0; k < services.Count; k++)
        {
            if (memos[k].Plan is not { } plan) continue;
            var group = assignment[plan.ContentKey];
            var element = before[k] is { Dispatch: { } had } && had.Group == group && had.Variant == plan.Variant ? had : NewDispatch(plan.Key, group, plan.Variant);
            memos[k].Dispatch = element;
            dispatch.Add((plan, (element.Key, element.Element)));
        }
        var chains = new Dictionary<(string, string), NftChain>();
        var chainsBefore = reusable ? input.Previous.Chains : null;
        var tables = new List<NftTable>();
        var dsrPlans = plans.Where(p => p.Dsr).ToList();
        var natPlans = plans.Where(p => !p.Dsr).ToList();
        if (services.Count > 0)
            tables.Add(TableRenderer.DsrTable(dsrPlans, assignment, contents, records.State, dispatch, chainsBefore, chains, input.OwnMac, options));
        if (natPlans.Count > 0)
            tables.Add(TableRenderer.NatTable(natPlans, assignment, contents, dispatch, chainsBefore, chains, options));
        step?.Dispose();
        step = phases?.Measure("build: marker");
        var ruleset = WithMarker(new NftRuleset(tables), options);
        step?.Dispose();

        var order = sameOrder ? input.Previous.Order! : services.ConvertAll(x => x.Key);
        var byKey = new Dictionary<ServiceKey, ServiceMemo>(services.Count);
        for (int k = 0; k < services.Count; k++) byKey[services[k].Key] = memos[k];
        var newAssignment = new Assignment(serviceGroups, groups, records.ServiceIds, new Dictionary<(ServiceKey, RealServerKey), uint>())
        {
            Contents = contents, ListIds = records.ListIds, Sets = sets, SetsFor = setOptions,
            Order = order, Memos = byKey, ServerRecordIds = records.ServerRecordIds, IdsOf = records.IdsOf, Members = records.Members, Texts = records.Texts, Chains = chains,
        };
        var programmedTables = plans.Where(p => p.Table is not null).Select(p => new LayoutTable(p.Key, p.Table!, p.TableProblem)).ToList();
        return new Layout(ruleset, newAssignment, issues, unresolved.ToList(), dsrAddresses.Order(AddressComparer).ToList()) { Tables = programmedTables };
    }

    /// <summary>The services in key order: the previous build's order when the keys are the same (no sort).</summary>
    private static (List<ServiceState>, bool Same) InOrder(IReadOnlyDictionary<ServiceKey, ServiceState> services, IReadOnlyList<ServiceKey>? order)
    {
        if (order is not null && order.Count == services.Count)
        {
            var list = new List<ServiceState>(order.Count);
            foreach (var key in order)
            {
                if (!services.TryGetValue(key, out var service)) break;
                list.Add(service);
            }
            if (list.Count == order.Count) return (list, true);
        }
        return (services.Values.OrderBy(s => s.Key, ServiceKeyComparer.Instance).ToList(), false);
    }

    private static DispatchElement NewDispatch(ServiceKey service, string group, string variant)
    {
        var key = TableRenderer.DispatchKey(service);
        return new DispatchElement(group, variant, key, $"{key} : goto {group}_{variant}");
    }

    /// <summary>The marker: a set whose comment is the fingerprint of everything else.</summary>
    private static NftRuleset WithMarker(NftRuleset ruleset, NftablesOptions options)
    {
        var dsr = ruleset.Table("netdev", options.DsrTable);
        if (dsr is null) return ruleset;
        var fingerprint = ruleset.Fingerprint(MarkerSet);
        var sets = new Dictionary<string, NftSet>(dsr.Sets)
        {
            [MarkerSet] = new(MarkerSet, "set", $"type mark; comment \"{MarkerComment(fingerprint)}\";", SetContent.Empty),
        };
        return new NftRuleset(ruleset.Tables.Select(t => t == dsr ? dsr with { Sets = sets } : t).ToList());
    }

    public static string MarkerComment(string fingerprint) => $"merlin v1 {fingerprint}";

    internal sealed record ServicePlan(ServiceKey Key, bool Dsr, int Size, string Shape, string ContentKey, string Variant,
        IReadOnlyList<Backend> Backends)
    {
        /// <summary>The stored minimal-disruption table the slots come from; null: Maglev.</summary>
        public MinimalDisruptionTable? Table { get; init; }

        /// <summary>Why the stored table was not used as is (<see cref="Table"/> is then the node's recomputation); null when it was.</summary>
        public string? TableProblem { get; init; }
    }

    internal sealed record Backend(string Id, uint Weight, string Value, string? Mac);

    private static readonly IComparer<IPAddress> AddressComparer = Comparer<IPAddress>.Create(AddressOrder.Compare);

    /// <summary>
    /// Texts a build needs many times (an ingress node's address and MAC appear in every service):
    /// formatted once per build.
    /// </summary>
    private sealed class TextCache
    {
        private readonly Dictionary<IPAddress, string> _addresses = new();
        private readonly Dictionary<PhysicalAddress, string> _macs = new();
        private readonly Dictionary<(RealServerKey, RealServerConfig, PhysicalAddress?), string> _servers = new();

        public string Address(IPAddress address)
        {
            if (!_addresses.TryGetValue(address, out var text)) _addresses[address] = text = address.ToString();
            return text;
        }

        public string Mac(PhysicalAddress mac)
        {
            if (!_macs.TryGetValue(mac, out var text)) _macs[mac] = text = StateRecords.MacText(mac);
            return text;
        }

        public string ServerBody(RealServerKey key, RealServerConfig config, PhysicalAddress? mac)
        {
            if (!_servers.TryGetValue((key, config, mac), out var text))
                _servers[(key, config, mac)] = text = StateRecords.ServerBody(key, config, mac is null ? null : Mac(mac));
            return text;
        }
    }

    /// <summary>What an analysis of a server set depends on besides the servers and their MACs.</summary>
    internal static string SetOptions(NftablesOptions options, PhysicalAddress? ownMac) =>
        $"{options.Interface}|{(ownMac is null ? "-" : StateRecords.MacText(ownMac))}|{Seed(options)}";

    private static ServicePlan? Plan(ServiceState service, SetPlan set, NftablesOptions options, bool dsrPossible, List<NftablesIssue> issues, ServicePlan? same)
    {
        var key = service.Key;
        if (key.IsFirewallMark)
        {
            issues.Add(new(key, null, "firewall-mark services are not supported by the nftables dataplane"));
            return null;
        }
        foreach (var (server, reason) in set.Issues) issues.Add(new(key, server, reason));
        if (set.Members == 0) return null;
        if (set.Dsr && !dsrPossible)
        {
            issues.Add(new(key, null, options.Interface is null
                ? "route (DSR) servers need --interface; the service is not programmed"
                : $"interface {options.Interface} was not found or has no MAC; the service is not programmed"));
            return null;
        }

        if (same is not null)
        {
            // Issues are made anew by every build: a reused plan reports its table's problem again.
            if (same.TableProblem is { } known) issues.Add(TableIssue(key, known, same.Table!));
            return same;
        }
        var (table, problem) = StoredTable(service);
        if (problem is not null) issues.Add(TableIssue(key, problem, table!));
        bool saddrOnly = service.Config.PersistenceTimeout > 0 ||
            (service.Config.Scheduler is "sh" or "mh" && !service.Config.Flags.HasFlag(SchedulerFlags.Flag2));
        string family = key.Family == IpFamily.V6 ? "6" : "4";
        var (shape, contentKey) = set.Keys(family);
        int size = set.Size;
        if (table is not null)
        {
            // The stored table decides M and the slots: services share a map only when their tables are equal too.
            size = table.Size;
            shape = set.Dsr ? $"dsr M={size}" : $"nat{family} M={size}";
            contentKey = $"{shape} {set.Content} md={table.HashText}";
        }
        string variant = set.Dsr
            ? $"{family}{(saddrOnly ? "s" : "p")}{(service.Config.OnePacket ? "u" : "")}"
            : saddrOnly ? "s" : "p";
        return new ServicePlan(key, set.Dsr, size, shape, contentKey, variant, set.Usable) { Table = table, TableProblem = problem };
    }

    /// <summary>
    /// The service's stored minimal-disruption table, if it is an md-table service that has one. One that cannot be used
    /// as is — it does not decode (damaged, wrong size: <see cref="TableFormatException"/>), or it was made for other
    /// servers than the service's (a server written by something other than Merlin's API, a record restored from
    /// elsewhere) — is replaced whole by what the API stores on the service's next write, which every node computes
    /// alike from the same store: the table computed from nothing, or the one that follows the stored table for the
    /// current servers. Never used in part. The second value says why it was replaced.
    /// </summary>
    private static (MinimalDisruptionTable? Table, string? Problem) StoredTable(ServiceState service)
    {
        if (!Schedulers.UsesStoredTable(service.Config) || service.Config.Table is not { } stored) return (null, null);
        MinimalDisruptionTable table;
        try
        {
            table = MinimalDisruptionTable.Decode(stored.Bytes);
        }
        catch (TableFormatException e)
        {
            return (MinimalDisruptionTable.Build(Members(service, null)), $"damaged ({e.Message})");
        }
        var servers = service.Servers.Keys.Select(k => Endpoints.Format(k.Address, k.Port)).ToHashSet(StringComparer.Ordinal);
        var inTable = table.Servers.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
        var missing = servers.Where(id => !inTable.Contains(id)).Order(StringComparer.Ordinal).ToList();
        var extra = inTable.Where(id => !servers.Contains(id)).Order(StringComparer.Ordinal).ToList();
        if (missing.Count == 0 && extra.Count == 0) return (table, null);
        static string Few(List<string> ids) => string.Join(", ", ids.Take(3)) + (ids.Count > 3 ? $" and {ids.Count - 3} more" : "");
        var parts = new List<string>(2);
        if (missing.Count > 0) parts.Add($"servers not in it: {Few(missing)}");
        if (extra.Count > 0) parts.Add($"in it but not servers: {Few(extra)}");
        return (table.Next(Members(service, table)), $"made for other servers ({string.Join("; ", parts)})");
    }

    /// <summary>
    /// The service's servers as table members, by endpoint as the API names them. A server the stored table has keeps
    /// the table's weight (this node's health verdicts must not make its table differ from other nodes'); another takes
    /// its weight here (0 while draining).
    /// </summary>
    private static List<(string Id, uint Weight)> Members(ServiceState service, MinimalDisruptionTable? stored)
    {
        var weights = stored?.Servers.ToDictionary(s => s.Id, s => s.Weight, StringComparer.Ordinal);
        return service.Servers.Select(kv =>
        {
            var id = Endpoints.Format(kv.Key.Address, kv.Key.Port);
            return (id, weights is not null && weights.TryGetValue(id, out var w) ? w : kv.Value.Weight);
        }).ToList();
    }

    private static NftablesIssue TableIssue(ServiceKey key, string problem, MinimalDisruptionTable programmed) =>
        new(key, null, $"stored md-table {problem}; programmed {programmed.HashText}, what the API stores on the service's next write") { StoredTable = true };

    /// <summary>
    /// What a set of real servers forwards to: the same for every service that has exactly these
    /// servers. <paramref name="Bodies"/> are the servers' state record texts; <paramref name="Macs"/>
    /// the MAC each route server had (null: unknown) when the analysis was made.
    /// </summary>
    internal sealed record SetPlan(bool Dsr, int Members, int Size, string Content, IReadOnlyList<Backend> Usable,
        IReadOnlyList<(RealServerKey, string)> Issues, IReadOnlyList<IPAddress> Addresses, IReadOnlyList<IPAddress> Unresolved,
        (RealServerKey Key, string Body)[] Bodies, (IPAddress Address, PhysicalAddress? Mac)[] Macs)
    {
        private (string, string)[]? _keys;

        /// <summary>
        /// The shape (kind and M) and content key of a group of this set's services of one family
        /// ("4" or "6"): one string each for all the services that share the set.
        /// </summary>
        public (string Shape, string ContentKey) Keys(string family)
        {
            var keys = _keys ??= new (string, string)[2];
            int at = family == "6" ? 1 : 0;
            if (keys[at].Item1 is null)
            {
                string shape = Dsr ? $"dsr M={Size}" : $"nat{family} M={Size}";
                keys[at] = (shape, shape + " " + Content);
            }
            return keys[at];
        }

        /// <summary>Whether every route server still has the MAC (or lack of one) this analysis saw.</summary>
        public bool SameMacs(IReadOnlyDictionary<IPAddress, PhysicalAddress> macs)
        {
            foreach (var (address, mac) in Macs)
            {
                var now = macs.GetValueOrDefault(address);
                if (mac is null ? now is not null : !mac.Equals(now)) return false;
            }
            return true;
        }
    }

    private static SetPlan Analyze(IReadOnlyDictionary<RealServerKey, RealServerConfig> map, IReadOnlyDictionary<IPAddress, PhysicalAddress> macs,
        NftablesOptions options, bool dsrPossible, TextCache text)
    {
        var servers = map.ToArray();
        Array.Sort(servers, (a, b) => a.Key.CompareTo(b.Key));
        var issues = new List<(RealServerKey, string)>();
        var route = new List<KeyValuePair<RealServerKey, RealServerConfig>>();
        var masq = new List<KeyValuePair<RealServerKey, RealServerConfig>>();
        foreach (var entry in servers)
        {
            switch (entry.Value.Forward)
            {
                case ForwardMethod.Tunnel: issues.Add((entry.Key, "tunnel forwarding is not supported by the nftables dataplane (use route or masq)")); break;
                case ForwardMethod.Route: route.Add(entry); break;
                case ForwardMethod.Masq: masq.Add(entry); break;
            }
        }
        bool dsr = route.Count > 0;
        if (dsr)
            foreach (var (server, _) in masq)
                issues.Add((server, "masq server in a service that has route servers: a service is either DSR or NAT; this one is DSR"));
        var members = dsr ? route : masq;
        var backends = new List<Backend>(members.Count);
        var addresses = new List<IPAddress>();
        var unresolved = new List<IPAddress>();
        if (dsr && dsrPossible)
        {
            var seen = new HashSet<IPAddress>();
            foreach (var (server, config) in members)
            {
                if (!seen.Add(server.Address))
                {
                    issues.Add((server, "another server of this DSR service has the same address (DSR cannot change the port); ignored"));
                    continue;
                }
                addresses.Add(server.Address);
                if (!macs.TryGetValue(server.Address, out var mac))
                {
                    unresolved.Add(server.Address);
                    issues.Add((server, $"MAC of {server.Address} on {options.Interface} is not known yet; out of the table until it resolves"));
                    backends.Add(new Backend(text.Address(server.Address), config.Weight, "", null));
                    continue;
                }
                var macText = text.Mac(mac);
                backends.Add(new Backend(text.Address(server.Address), config.Weight, macText, macText));
            }
        }
        else if (!dsr)
        {
            foreach (var (server, config) in members)
                backends.Add(new Backend(Endpoints.Format(server.Address, server.Port), config.Weight, $"{text.Address(server.Address)} . {server.Port.ToString(CultureInfo.InvariantCulture)}", null));
        }
        // Unresolved DSR servers count towards M (every node must pick the same M) but hold no slot.
        int size = MaglevTable.ChooseSize(backends.Count);
        var usable = backends.Where(b => !dsr || b.Mac is not null).OrderBy(b => b.Id, StringComparer.Ordinal).ToList();
        var content = new System.Text.StringBuilder();
        for (int i = 0; i < usable.Count; i++)
        {
            if (i > 0) content.Append(',');
            content.Append(usable[i].Id).Append('=').Append(usable[i].Weight).Append('@').Append(usable[i].Value);
        }
        var bodies = new (RealServerKey, string)[servers.Length];
        var macsSeen = new List<(IPAddress, PhysicalAddress?)>();
        for (int i = 0; i < servers.Length; i++)
        {
            var (server, config) = servers[i];
            PhysicalAddress? mac = null;
            if (config.Forward == ForwardMethod.Route)
            {
                mac = macs.GetValueOrDefault(server.Address);
                macsSeen.Add((server.Address, mac));
            }
            bodies[i] = (server, text.ServerBody(server, config, mac));
        }
        return new SetPlan(dsr, members.Count, size, content.ToString(), usable, issues, addresses, unresolved, bodies, [.. macsSeen]);
    }

    /// <summary>Server maps compared by content (services built apart still share an analysis).</summary>
    private sealed class ServerSetComparer : IEqualityComparer<IReadOnlyDictionary<RealServerKey, RealServerConfig>>
    {
        public static readonly ServerSetComparer Instance = new();

        public bool Equals(IReadOnlyDictionary<RealServerKey, RealServerConfig>? x, IReadOnlyDictionary<RealServerKey, RealServerConfig>? y)
        {
            if (ReferenceEquals(x, y)) return true;
            if (x is null || y is null || x.Count != y.Count) return false;
            foreach (var (key, config) in x)
                if (!y.TryGetValue(key, out var other) || !config.Equals(other)) return false;
            return true;
        }

        public int GetHashCode(IReadOnlyDictionary<RealServerKey, RealServerConfig> map)
        {
            int hash = map.Count;
            foreach (var (key, config) in map) hash += HashCode.Combine(key, config.Weight, config.Forward);
            return hash;
        }
    }

    /// <summary>The seed as nft prints it back (hex, no leading zeros).</summary>
    internal static string Seed(NftablesOptions options) => "0x" + options.HashSeed.ToString("x", CultureInfo.InvariantCulture);

    internal static bool IsV6(IPAddress address) => address.AddressFamily == AddressFamily.InterNetworkV6;
}
