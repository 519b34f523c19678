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
        var assignment = Assign(plans, input.Previous);
        var serviceGroups = new Dictionary<ServiceKey, string>();
        foreach (var plan in plans) serviceGroups[plan.Key] = assignment[plan.ContentKey];

        step?.Dispose();
        step = phases?.Measure("build: records");
        // 3. State records, their ids kept across layouts so an unchanged record is never rewritten.
        var records = Records(services, setOf, before, memos, input, serviceGroups);

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
            made[i] = new GroupContent(Slots(plan), plan.Dsr ? KeyedContent.Of(plan.Backends.Select(b => (b.Mac!, b.Mac!))) : null);
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
            tables.Add(DsrTable(dsrPlans, assignment, contents, records.State, dispatch, chainsBefore, chains, input.OwnMac, options));
        if (natPlans.Count > 0)
            tables.Add(NatTable(natPlans, assignment, contents, dispatch, chainsBefore, chains, options));
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
        var key = DispatchKey(service);
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

    /// <summary>Content key → group name. Deterministic: contents with more services choose first.</summary>
    private static Dictionary<string, string> Assign(List<ServicePlan> plans, Assignment previous)
    {
        var contents = plans.GroupBy(p => p.ContentKey)
            .Select(g => (Key: g.Key, Plans: g.ToList()))
            .OrderByDescending(c => c.Plans.Count).ThenBy(c => c.Key, StringComparer.Ordinal)
            .ToList();
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        var claimed = new HashSet<string>(StringComparer.Ordinal);
        var taken = new HashSet<string>(previous.Groups.Keys.Concat(previous.ServiceGroups.Values), StringComparer.Ordinal);
        // Previous groups by content, names in order: a lookup per content, not a scan of every group.
        var byContent = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var group in previous.Groups.Values)
        {
            if (!byContent.TryGetValue(group.ContentKey, out var names)) byContent[group.ContentKey] = names = [];
            names.Add(group.Name);
        }
        foreach (var names in byContent.Values) names.Sort(StringComparer.Ordinal);
        var fresh = new Dictionary<string, int>(StringComparer.Ordinal) { ["d"] = 1, ["n"] = 1 };
        foreach (var (key, members) in contents)
        {
            var shape = members[0].Shape;
            var prefix = members[0].Dsr ? "d" : "n";
            bool Fits(string name) => !claimed.Contains(name) && name.StartsWith(prefix, StringComparison.Ordinal) &&
                (!previous.Groups.TryGetValue(name, out var info) || info.Shape == shape);

            // The same content as before: keep its name (nothing to write).
            var name = byContent.TryGetValue(key, out var same) ? same.FirstOrDefault(Fits) : null;
            // Else the group most of these services used: edit that map in place.
            name ??= members.Select(m => previous.ServiceGroups.GetValueOrDefault(m.Key)).OfType<string>().Where(Fits)
                .GroupBy(n => n).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).Select(g => g.Key).FirstOrDefault();
            // Else a fresh name that no previous group holds.
            if (name is null)
            {
                // Names are tried in order and a name once claimed or taken stays so: resume where the last search stopped.
                for (int n = fresh[prefix]; ; n++)
                {
                    var candidate = prefix + n.ToString(CultureInfo.InvariantCulture);
                    if (!claimed.Contains(candidate) && !taken.Contains(candidate)) { name = candidate; fresh[prefix] = n; break; }
                }
            }
            claimed.Add(name);
            result[key] = name;
        }
        return result;
    }

    /// <summary>What <see cref="Records"/> gives: ids, the state set, and what the next build reuses.</summary>
    private sealed record RecordsResult(Dictionary<ServiceKey, uint> ServiceIds, Dictionary<ServiceKey, uint> ListIds, SetContent State,
        Dictionary<string, uint> ServerRecordIds, Dictionary<SetPlan, uint[]> IdsOf, Dictionary<SetPlan, (uint[] Ids, string Text)> Members, Dictionary<uint, RecordText> Texts);

    /// <summary>
    /// The state records (see <see cref="StateRecords"/>) and their ids. Ids carry over from the
    /// previous layout: a service keeps its id; a real server record or a server list keeps the id
    /// that most of its users had (so a weight change in every service that shares a server rewrites
    /// that server's one record under its old id, and no service record). New records take the
    /// lowest ids no previous record held, so ids stay small however long the daemon runs.
    /// <para>
    /// Work is per distinct server set, not per (service, server): the users of a set that had the
    /// same set before vote for its servers' old ids all at once. A record whose id and text did
    /// not change keeps its elements from the previous build (nothing is formatted again).
    /// </para>
    /// </summary>
    private static RecordsResult Records(List<ServiceState> services, SetPlan[] setOf, ServiceMemo?[] before, ServiceMemo[] memos, LayoutInput input,
        Dictionary<ServiceKey, string> groups)
    {
        var previous = input.Previous;
        var ids = new IdAllocator(previous.ServiceIds.Values.Concat(previous.ServerRecordIds is { } had ? had.Values : previous.ServerIds.Values).Concat(previous.ListIds.Values));

        // Services keep their ids.
        var serviceIds = new Dictionary<ServiceKey, uint>(services.Count);
        foreach (var service in services)
            if (previous.ServiceIds.TryGetValue(service.Key, out var id) && ids.Claim(id)) serviceIds[service.Key] = id;

        // The services of each distinct server set, and of those, which set each had before.
        var users = new Dictionary<SetPlan, List<int>>(ReferenceEqualityComparer.Instance);
        var distinct = new List<SetPlan>();
        for (int k = 0; k < services.Count; k++)
        {
            if (!users.TryGetValue(setOf[k], out var list)) { users[setOf[k]] = list = []; distinct.Add(setOf[k]); }
            list.Add(k);
        }

        // Real server records: one per distinct body, voted for by every (service, server) that has it.
        var oldIds = new Dictionary<SetPlan, uint[]>(ReferenceEqualityComparer.Instance);
        uint[] OldIds(SetPlan set)
        {
            if (previous.IdsOf is { } known && known.TryGetValue(set, out var result)) return result;
            if (oldIds.TryGetValue(set, out result)) return result;
            result = new uint[set.Bodies.Length];
            for (int i = 0; i < result.Length; i++) result[i] = previous.ServerRecordIds!.GetValueOrDefault(set.Bodies[i].Body);
            return oldIds[set] = result;
        }
        var bodies = new Dictionary<string, Votes>(StringComparer.Ordinal);
        var votesOf = new Dictionary<SetPlan, Votes[]>(ReferenceEqualityComparer.Instance);
        var byOldSet = new Dictionary<SetPlan, int>(ReferenceEqualityComparer.Instance);
        foreach (var set in distinct)
        {
            var members = users[set];
            var mine = votesOf[set] = new Votes[set.Bodies.Length];
            byOldSet.Clear();
            foreach (var k in members)
                if (before[k] is { } memo && previous.ServerRecordIds is not null) byOldSet[memo.Set] = byOldSet.GetValueOrDefault(memo.Set) + 1;
            for (int i = 0; i < set.Bodies.Length; i++)
            {
                var (server, body) = set.Bodies[i];
                if (!bodies.TryGetValue(body, out var votes)) bodies[body] = votes = new Votes();
                mine[i] = votes;
                votes.Users += members.Count;
                foreach (var (old, count) in byOldSet)
                {
                    int j = i < old.Bodies.Length && old.Bodies[i].Key == server ? i : Array.FindIndex(old.Bodies, b => b.Key == server);
                    if (j >= 0) votes.Add(OldIds(old)[j], count);
                }
                // Services the previous build did not make (adopted from the kernel's records): one by one.
                if (previous.ServerRecordIds is null)
                    foreach (var k in members)
                        votes.Add(previous.ServerIds.GetValueOrDefault((services[k].Key, server)), 1);
            }
        }
        foreach (var service in services)
            if (!serviceIds.ContainsKey(service.Key)) serviceIds[service.Key] = ids.Fresh();
        var serverRecords = ids.Assign(bodies);
        var idsOf = new Dictionary<SetPlan, uint[]>(distinct.Count, ReferenceEqualityComparer.Instance);
        foreach (var (set, votes) in votesOf) idsOf[set] = Array.ConvertAll(votes, v => v.Id);

        // Server lists: one per distinct set of server records.
        var memberTexts = new Dictionary<SetPlan, (uint[] Ids, string Text)>(ReferenceEqualityComparer.Instance);
        var memberLists = new Dictionary<string, List<ServiceKey>>(StringComparer.Ordinal);
        foreach (var set in distinct)
        {
            if (set.Bodies.Length == 0) continue;
            var sorted = (uint[])idsOf[set].Clone();
            Array.Sort(sorted);
            string text = previous.Members is { } known && known.TryGetValue(set, out var was) && was.Ids.AsSpan().SequenceEqual(sorted)
                ? was.Text
                : string.Join(',', sorted.Select(i => i.ToString(CultureInfo.InvariantCulture)));
            memberTexts[set] = (sorted, text);
            if (!memberLists.TryGetValue(text, out var list)) memberLists[text] = list = [];
            foreach (var k in users[set]) list.Add(services[k].Key);
        }
        var listRecords = ids.Assign(memberLists, previous.ListIds);
        var listIds = new Dictionary<ServiceKey, uint>();
        foreach (var (members, list) in memberLists)
            foreach (var user in list) listIds[user] = listRecords[members];

        // The elements: reused where id and text are what the previous build wrote.
        var texts = new Dictionary<uint, RecordText>(serverRecords.Count + listRecords.Count);
        var elements = new List<(string Key, string Element)>(services.Count + serverRecords.Count + listRecords.Count);
        for (int k = 0; k < services.Count; k++)
        {
            var service = services[k];
            var id = serviceIds[service.Key];
            var group = groups.GetValueOrDefault(service.Key);
            uint? list = listIds.TryGetValue(service.Key, out var l) ? l : null;
            var record = before[k] is { Record: { } r } memo && r.Id == id && r.Group == group && r.List == list
                && (ReferenceEquals(memo.State.Config, service.Config) || memo.State.Config == service.Config)
                ? r
                : new ServiceRecord(id, group, list, [.. StateRecords.Elements(id, StateRecords.Service(id, service.Key, service.Config, group, list))]);
            memos[k].Record = record;
            elements.AddRange(record.Elements);
        }
        RecordText Text(char kind, uint id, string body, Func<uint, string, string> format)
        {
            if (previous.Texts is { } known && known.TryGetValue(id, out var was) && was.Kind == kind && was.Body == body) return texts[id] = was;
            return texts[id] = new RecordText(kind, body, [.. StateRecords.Elements(id, format(id, body))]);
        }
        foreach (var (body, id) in serverRecords) elements.AddRange(Text('r', id, body, StateRecords.Server).Elements);
        foreach (var (members, id) in listRecords) elements.AddRange(Text('l', id, members, StateRecords.List).Elements);
        return new RecordsResult(serviceIds, listIds, KeyedContent.Of(elements), serverRecords, idsOf, memberTexts, texts);
    }

    /// <summary>The previous ids a record's users had, with how many users had each.</summary>
    private sealed class Votes
    {
        public int Users;

        /// <summary>The id the record got.</summary>
        public uint Id;
        private uint _only;
        private int _onlyCount;
        private Dictionary<uint, int>? _several;

        public void Add(uint id, int count)
        {
            if (id == 0) return;
            if (_several is not null) { _several[id] = _several.GetValueOrDefault(id) + count; return; }
            if (_only == 0 || _only == id) { _only = id; _onlyCount += count; return; }
            _several = new Dictionary<uint, int> { [_only] = _onlyCount, [id] = count };
        }

        /// <summary>The ids, most users first, then the lowest.</summary>
        public IEnumerable<uint> Ranked() =>
            _several is not null ? _several.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key).Select(kv => kv.Key)
            : _only != 0 ? [_only] : [];
    }

    /// <summary>Record ids: one namespace for services, servers and lists (they share the state set's keys).</summary>
    private sealed class IdAllocator(IEnumerable<uint> previous)
    {
        private readonly HashSet<uint> _previous = [.. previous];
        private readonly HashSet<uint> _claimed = [];
        private uint _next = 1;

        public bool Claim(uint id) => id is > 0 and <= StateRecords.MaxId && _claimed.Add(id);

        /// <summary>The lowest id that neither this layout nor the previous one uses.</summary>
        public uint Fresh()
        {
            while (_previous.Contains(_next) || _claimed.Contains(_next)) _next++;
            if (_next > StateRecords.MaxId) throw new InvalidOperationException("no state record ids left");
            _claimed.Add(_next);
            return _next++;
        }

        /// <summary>As the other overload, from votes already counted: the records with most users choose first.</summary>
        public Dictionary<string, uint> Assign(Dictionary<string, Votes> records)
        {
            var result = new Dictionary<string, uint>(records.Count, StringComparer.Ordinal);
            var order = records.OrderByDescending(r => r.Value.Users).ThenBy(r => r.Key, StringComparer.Ordinal).ToList();
            foreach (var (content, votes) in order)
            {
                foreach (var id in votes.Ranked())
                {
                    if (!Claim(id)) continue;
                    result[content] = votes.Id = id;
                    break;
                }
            }
            foreach (var (content, votes) in order)
                if (!result.ContainsKey(content)) result[content] = votes.Id = Fresh();
            return result;
        }

        /// <summary>
        /// An id for each record (content → its users): the id most of its users had, unless a record
        /// with more users took it first; else a fresh one. Deterministic.
        /// </summary>
        public Dictionary<string, uint> Assign<TUser>(Dictionary<string, List<TUser>> records, IReadOnlyDictionary<TUser, uint> previous) where TUser : notnull
        {
            var result = new Dictionary<string, uint>(records.Count, StringComparer.Ordinal);
            var order = records.OrderByDescending(r => r.Value.Count).ThenBy(r => r.Key, StringComparer.Ordinal).ToList();
            foreach (var (content, users) in order)
            {
                // Nearly always every user had the same id (or none had one): no grouping then.
                uint only = 0;
                bool several = false;
                foreach (var user in users)
                {
                    if (!previous.TryGetValue(user, out var id) || id == 0) continue;
                    if (only == 0) only = id;
                    else if (id != only) { several = true; break; }
                }
                if (only == 0) continue;
                IEnumerable<uint> had = !several ? [only] : users.Select(u => previous.TryGetValue(u, out var id) ? id : 0u).Where(id => id != 0)
                    .GroupBy(id => id).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).Select(g => g.Key);
                foreach (var id in had)
                {
                    if (!Claim(id)) continue;
                    result[content] = id;
                    break;
                }
            }
            foreach (var (content, _) in order)
                if (!result.ContainsKey(content)) result[content] = Fresh();
            return result;
        }
    }

    private static NftTable DsrTable(List<ServicePlan> plans, Dictionary<string, string> groups, Dictionary<string, GroupContent> contents,
        SetContent state, List<(ServicePlan Plan, (string Key, string Element) Element)> dispatch,
        IReadOnlyDictionary<(string, string), NftChain>? chainsBefore, Dictionary<(string, string), NftChain> chainsNow, PhysicalAddress? ownMac, NftablesOptions options)
    {
        var sets = new Dictionary<string, NftSet>
        {
            [StateSet] = new(StateSet, "set", "type mark;", state),
        };
        var chains = new Dictionary<string, NftChain>();
        if (plans.Count > 0)
        {
            var own = StateRecords.MacText(ownMac!);
            var iface = options.Interface!;
            var seed = Seed(options);
            var timeout = ((long)options.FlowTimeout.TotalSeconds).ToString(CultureInfo.InvariantCulture);
            var maxFlows = options.MaxPinnedFlows.ToString(CultureInfo.InvariantCulture);
            sets["flows4"] = new("flows4", "map", $"type ipv4_addr . ipv4_addr . inet_service . inet_service : ether_addr; size {maxFlows}; flags dynamic,timeout; timeout {timeout}s;", SetContent.Empty, Dynamic: true);
            sets["flows6"] = new("flows6", "map", $"typeof numgen inc mod 2 . th sport . th dport : ether daddr; size {maxFlows}; flags dynamic,timeout; timeout {timeout}s;", SetContent.Empty, Dynamic: true);
            sets["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, true, IpFamily.V4));
            sets["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, true, IpFamily.V6));
            chains["ingress"] = new("ingress", $"type filter hook ingress device \"{iface}\" priority 0; policy accept;",
            [
                $"ether daddr {own} ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
                $"ether daddr {own} ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            ]);
            foreach (var group in plans.GroupBy(p => groups[p.ContentKey]))
            {
                var plan = group.First();
                var name = group.Key;
                sets[name] = new(name, "map", Declarations.Dsr(plan.Size), contents[plan.ContentKey].Map);
                sets[name + "_live"] = new(name + "_live", "set", "type ether_addr;", contents[plan.ContentKey].Live!);
                foreach (var variant in group.Select(p => p.Variant).Distinct())
                {
                    var chain = $"{name}_{variant}";
                    if (chainsBefore is null || !chainsBefore.TryGetValue((chain, plan.Shape), out var made))
                        made = new(chain, null, DsrRules(name, plan.Size, variant, own, iface, seed));
                    chains[chain] = chainsNow[(chain, plan.Shape)] = made;
                }
            }
        }
        return new NftTable("netdev", options.DsrTable, sets, chains);
    }

    private static List<string> DsrRules(string group, int size, string variant, string own, string iface, string seed)
    {
        bool v6 = variant[0] == '6';
        bool saddrOnly = variant[1] == 's';
        bool pinned = !variant.EndsWith('u');
        string ip = v6 ? "ip6" : "ip";
        string m = size.ToString(CultureInfo.InvariantCulture);
        string hash = saddrOnly ? $"jhash {ip} saddr mod {m} seed {seed}" : $"jhash {ip} saddr . th sport mod {m} seed {seed}";
        // The flow key: exact for IPv4; for IPv6 the address pair is folded by a hash, because nft
        // 1.0.6 cannot write a dynamic map update whose key is longer than 16 bytes.
        string flow = v6 ? $"jhash ip6 saddr . ip6 daddr mod {FullRange.ToString(CultureInfo.InvariantCulture)} seed {seed} . th sport . th dport" : "ip saddr . ip daddr . th sport . th dport";
        string flows = v6 ? "flows6" : "flows4";
        string forward = $"ether saddr set {own} fwd to \"{iface}\"";
        var rules = new List<string>();
        if (pinned)
        {
            rules.Add($"ether daddr set {flow} map @{flows} ether daddr @{group}_live update @{flows} {{ {flow} : ether daddr }} {forward} comment \"merlin: pinned flow\"");
            rules.Add($"ether daddr set {hash} map @{group} update @{flows} {{ {flow} : ether daddr }} {forward} comment \"merlin: new flow\"");
            rules.Add($"ether daddr set {hash} map @{group} {forward} comment \"merlin: new flow, flow map full\"");
        }
        else
        {
            rules.Add($"ether daddr set {hash} map @{group} {forward} comment \"merlin: one-packet scheduling\"");
        }
        rules.Add($"ether daddr set {own} comment \"merlin: no real server, local delivery\"");
        return rules;
    }

    private static NftTable NatTable(List<ServicePlan> plans, Dictionary<string, string> groups, Dictionary<string, GroupContent> contents,
        List<(ServicePlan Plan, (string Key, string Element) Element)> dispatch,
        IReadOnlyDictionary<(string, string), NftChain>? chainsBefore, Dictionary<(string, string), NftChain> chainsNow, NftablesOptions options)
    {
        var seed = Seed(options);
        var sets = new Dictionary<string, NftSet>
        {
            ["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, false, IpFamily.V4)),
            ["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(dispatch, false, IpFamily.V6)),
        };
        var chains = new Dictionary<string, NftChain>
        {
            ["prerouting"] = new("prerouting", "type nat hook prerouting priority dstnat; policy accept;",
            [
                "ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
                "ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            ]),
        };
        foreach (var group in plans.GroupBy(p => groups[p.ContentKey]))
        {
            var plan = group.First();
            var name = group.Key;
            string ip = plan.Key.Family == IpFamily.V6 ? "ip6" : "ip";
            string m = plan.Size.ToString(CultureInfo.InvariantCulture);
            sets[name] = new(name, "map", $"typeof numgen inc mod {m} : {ip} daddr . th dport; size {m};", contents[plan.ContentKey].Map);
            foreach (var variant in group.Select(p => p.Variant).Distinct())
            {
                string hash = variant == "s" ? $"jhash {ip} saddr mod {m} seed {seed}" : $"jhash {ip} saddr . th sport mod {m} seed {seed}";
                var chain = $"{name}_{variant}";
                if (chainsBefore is null || !chainsBefore.TryGetValue((chain, plan.Shape), out var made))
                    made = new(chain, null,
                    [
                        $"meta l4proto {{ tcp, udp, sctp }} dnat {ip} to {hash} map @{name} comment \"merlin: new connection\"",
                    ]);
                chains[chain] = chainsNow[(chain, plan.Shape)] = made;
            }
        }
        return new NftTable("inet", options.NatTable, sets, chains);
    }

    private static SetContent Dispatch(List<(ServicePlan Plan, (string Key, string Element) Element)> dispatch, bool dsr, IpFamily family) =>
        KeyedContent.Of(dispatch.Where(d => d.Plan.Dsr == dsr && d.Plan.Key.Family == family).Select(d => d.Element));

    /// <summary>Map declarations by size: a layout of a thousand maps has a handful of sizes.</summary>
    /// <summary>The declaration of a DSR Maglev map of <paramref name="size"/> slots.</summary>
    internal static string DsrDeclaration(int size) => Declarations.Dsr(size);

    private static class Declarations
    {
        private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, string> ByDsrSize = new();

        public static string Dsr(int size) => ByDsrSize.GetOrAdd(size, m => $"typeof numgen inc mod {m} : ether daddr; size {m};");
    }

    public static string DispatchKey(ServiceKey key) =>
        $"{key.Address} . {key.Protocol.ToString().ToLowerInvariant()} . {key.Port.ToString(CultureInfo.InvariantCulture)}";

    private static SetContent Slots(ServicePlan plan)
    {
        if (plan.Table is { } stored) return StoredSlots(plan, stored);
        var values = new string?[plan.Size];
        var active = plan.Backends.Where(b => b.Weight > 0).ToList();
        if (active.Count == 0) return new SlotContent(values);
        var table = MaglevTable.Build(active.Select(b => (b.Id, b.Weight)).ToList(), plan.Size);
        for (int i = 0; i < table.Length; i++)
            if (table[i] >= 0) values[i] = active[table[i]].Value;
        return new SlotContent(values);
    }

    /// <summary>
    /// The map from a stored table: each slot to its owner's value (MAC for DSR, address . port for NAT). A slot
    /// whose owner this node cannot use — weight 0 here (health check down), MAC unknown, no longer a server —
    /// takes the owner of the next slot it can use, so nodes that agree on those program the same map.
    /// </summary>
    private static SetContent StoredSlots(ServicePlan plan, MinimalDisruptionTable table)
    {
        var byId = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var b in plan.Backends)
            if (b.Weight > 0) byId[b.Id] = b.Value;
        var owners = new string?[table.Servers.Count];
        for (int i = 0; i < owners.Length; i++)
        {
            var id = table.Servers[i].Id;
            // DSR backends are named by address (one server per address); the table by endpoint.
            if (plan.Dsr && Endpoints.TryParse(id, out var address, out _, out _)) id = address.ToString();
            owners[i] = byId.GetValueOrDefault(id);
        }
        var values = new string?[table.Size];
        var slots = table.Owners;
        int last = -1;
        for (int s = 0; s < values.Length; s++)
        {
            if (slots[s] >= 0 && owners[slots[s]] is { } v) { values[s] = v; last = s; }
        }
        if (last < 0) return new SlotContent(values);
        // Fill the gaps backwards from each usable slot, wrapping: a gap takes the next usable owner.
        string? next = values[last];
        for (int k = 0; k < values.Length; k++)
        {
            int s = (last - k + values.Length) % values.Length;
            if (values[s] is { } v) next = v;
            else values[s] = next;
        }
        return new SlotContent(values);
    }

    /// <summary>The seed as nft prints it back (hex, no leading zeros).</summary>
    internal static string Seed(NftablesOptions options) => "0x" + options.HashSeed.ToString("x", CultureInfo.InvariantCulture);

    internal static bool IsV6(IPAddress address) => address.AddressFamily == AddressFamily.InterNetworkV6;
}
