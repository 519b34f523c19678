using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Merlin.Dataplane.Abstractions;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>A service's state record: its inputs besides the service and its elements.</summary>
internal sealed record ServiceRecord(uint Id, string? Group, uint? List, (string Key, string Element)[] Elements);

/// <summary>A server or list record: its text (without the id) and its elements.</summary>
internal sealed record RecordText(char Kind, string Body, (string Key, string Element)[] Elements);

/// <summary>A service's element of the dispatch map.</summary>
internal sealed record DispatchElement(string Group, string Variant, string Key, string Element);

/// <summary>A group's map elements and, for DSR, its servers' MACs (keys and elements both the MAC's text).</summary>
internal sealed record GroupContent(SetContent Map, SetContent? Macs);

/// <summary>A group of services that share one Maglev map: same kind, size and backends. <paramref name="Shape"/> is kind and size (what a map can be edited within).</summary>
internal sealed record GroupInfo(string Name, string Shape, string ContentKey);

/// <summary>Everything the builder needs besides the options; pure data.</summary>
internal sealed record LayoutInput(
    IReadOnlyDictionary<ServiceKey, ServiceState> Services,
    IReadOnlyDictionary<IPAddress, PhysicalAddress> Macs,
    PhysicalAddress? OwnMac,
    Assignment Previous)
{
    /// <summary>
    /// A number that changes whenever <see cref="Macs"/> does (<see cref="Neighbours.NeighbourTracker.Version"/>); null:
    /// unknown. Only with it can a build after a small change skip checking every server set's MACs (<see cref="LayoutPatch"/>).
    /// </summary>
    public long? MacsVersion { get; init; }
}

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

    /// <summary>Each pinned DSR service with the servers its flows may stay pinned to, in service order.</summary>
    public IReadOnlyList<PinTarget> Pinned { get; init; } = [];
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
/// <item>Services with the same kind, M and backends (identity, weight, MAC) share one map
/// and one chain per hash variant; a dispatch verdict map sends each service to its chain.</item>
/// <item>The hash key is <c>saddr . sport</c>, or <c>saddr</c> alone for sh/mh without their port flag
/// and for persistent services (persistence is per client address; a netmask is not applied).</item>
/// </list>
/// </summary>
internal static class LayoutBuilder
{
    public const string MarkerSet = "marker";
    public const string StateSet = "state";
    public const uint FullRange = uint.MaxValue;

    /// <summary>
    /// Builds the layout of <paramref name="input"/>. <paramref name="cache"/> holds what earlier builds made (see
    /// <see cref="BuildCache"/>; null: nothing, a build from scratch) and is left holding what this build made.
    /// </summary>
    public static Layout Build(LayoutInput input, NftablesOptions options, BuildCache? cache = null, Phases? phases = null)
    {
        cache ??= new BuildCache();
        var setOptions = SetOptions(options, input.OwnMac);
        using (phases?.Measure("build: patch"))
            if (LayoutPatch.TryBuild(input, options, cache, setOptions, phases) is { } patched) return patched;
        var step = phases?.Measure("build: plans");
        var issues = new List<NftablesIssue>();
        var unresolved = new SortedSet<IPAddress>(Comparer<IPAddress>.Create(AddressOrder.Compare));
        var dsrAddresses = new HashSet<IPAddress>();
        var text = new TextCache();
        var (services, sameOrder) = InOrder(input.Services, cache.Order);
        bool dsrPossible = options.Interface is not null && input.OwnMac is not null;

        // 1. What each service forwards to. Services with the same servers (the ingress case: all of
        // them) share one analysis of them, and a set the cache holds under the same options is reused
        // while its servers' MACs are the same. A service whose state is what the cache saw, with the
        // same analysis, keeps its plan (nothing of it is formatted again).
        var plans = new List<ServicePlan>();
        var sets = new Dictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, SetPlan>(ServerSetComparer.Instance);
        bool sameOptions = cache.Options == setOptions;
        var cachedSets = sameOptions ? cache.Sets : null;
        var previousSets = input.Previous.ServerSets;
        var setOf = new SetPlan[services.Count];
        var entries = new ServiceEntry[services.Count];
        // What the cache had of each service (its record and dispatch element are checked by content, under any options).
        var cachedEntries = new ServiceEntry?[services.Count];
        // The server set each service had in the previous layout: its ids follow from it.
        var setBefore = new SetPlan?[services.Count];
        var macsStill = new Dictionary<SetPlan, bool>(ReferenceEqualityComparer.Instance);
        var seen = new Dictionary<SetPlan, IReadOnlyDictionary<RealServerKey, RealServerConfig>>(ReferenceEqualityComparer.Instance);
        for (int k = 0; k < services.Count; k++)
        {
            var service = services[k];
            SetPlan? set = null;
            ServicePlan? samePlan = null;
            if (previousSets is not null) setBefore[k] = previousSets.GetValueOrDefault(service.Key);
            if (cache.Services.TryGetValue(service.Key, out var entry))
            {
                cachedEntries[k] = entry;
                if (!macsStill.TryGetValue(entry.Set, out var still)) macsStill[entry.Set] = still = entry.Set.SameMacs(input.Macs);
                if (sameOptions && still && BuildCache.SameState(entry.State, service)) (set, samePlan) = (entry.Set, entry.Plan);
            }
            if (set is null && !sets.TryGetValue(service.Servers, out set))
            {
                if (cachedSets is null || !cachedSets.TryGetValue(service.Servers, out set) || !set.SameMacs(input.Macs))
                    set = Analyze(service.Servers, input.Macs, options, dsrPossible, text);
                sets[service.Servers] = set;
            }
            setOf[k] = set;
            if (seen.TryAdd(set, service.Servers) && set.Dsr && dsrPossible)
            {
                dsrAddresses.UnionWith(set.Addresses);
                unresolved.UnionWith(set.Unresolved);
            }
            var plan = Plan(service, set, options, dsrPossible, issues, samePlan);
            entries[k] = new ServiceEntry(service, set) { Plan = plan };
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
        var records = StateRecordPlanner.Plan(services, setOf, setBefore, cachedEntries, entries, input, cache, serviceGroups);

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
            if (cache.Contents.TryGetValue(plan.ContentKey, out var had)) contents[plan.ContentKey] = had;
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
            if (entries[k].Plan is not { } plan) continue;
            var group = assignment[plan.ContentKey];
            var element = cachedEntries[k] is { Dispatch: { } had } && had.Group == group && had.Variant == plan.Variant ? had : NewDispatch(plan.Key, group, plan.Variant);
            entries[k].Dispatch = element;
            dispatch.Add((plan, (element.Key, element.Element)));
        }
        // The servers each pinned DSR service's flows may stay pinned to: its group's MACs (no kernel set; the dataplane
        // deletes the pins they rule out, PinSweep).
        var pinned = new List<PinTarget>();
        for (int k = 0; k < services.Count; k++)
            if (entries[k].Plan is { Dsr: true } plan && !plan.Variant.EndsWith('u')) pinned.Add(new PinTarget(plan.Key, contents[plan.ContentKey].Macs!));
        var chains = new Dictionary<(string, string), NftChain>();
        var chainsBefore = sameOptions ? cache.Chains : null;
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

        var order = sameOrder ? cache.Order! : services.ConvertAll(x => x.Key);
        var byKey = new Dictionary<ServiceKey, ServiceEntry>(services.Count);
        var serverSets = new Dictionary<ServiceKey, SetPlan>(services.Count);
        for (int k = 0; k < services.Count; k++) (byKey[services[k].Key], serverSets[services[k].Key]) = (entries[k], setOf[k]);
        cache.Keep(setOptions, order, byKey, sets, contents, records.Members, records.Texts, chains);
        var newAssignment = new Assignment(serviceGroups, groups, records.ServiceIds, new Dictionary<(ServiceKey, RealServerKey), uint>())
        {
            ListIds = records.ListIds, ServerRecordIds = records.ServerRecordIds, ServerSets = serverSets, IdsOf = records.IdsOf,
        };
        var programmedTables = plans.Where(p => p.Table is not null).Select(p => new LayoutTable(p.Key, p.Table!, p.TableProblem)).ToList();
        var layout = new Layout(ruleset, newAssignment, issues, unresolved.ToList(), dsrAddresses.Order(AddressComparer).ToList()) { Tables = programmedTables, Pinned = pinned };
        // What a patch of this layout needs to know: who else has each server set, record and map.
        var setUsers = new Dictionary<SetPlan, int>(ReferenceEqualityComparer.Instance);
        foreach (var set in setOf) setUsers[set] = setUsers.GetValueOrDefault(set) + 1;
        var contentUsers = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var plan in plans) contentUsers[plan.ContentKey] = contentUsers.GetValueOrDefault(plan.ContentKey) + 1;
        cache.Last = new LastBuild(layout, input.MacsVersion, setUsers, records.BodyUsers, contentUsers);
        return layout;
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
    internal static NftRuleset WithMarker(NftRuleset ruleset, NftablesOptions options)
    {
        var dsr = ruleset.Table("netdev", options.DsrTable);
        if (dsr is null) return ruleset;
        var fingerprint = ruleset.Fingerprint(MarkerSet);
        var marker = Marker(MarkerComment(fingerprint));
        NftTable marked;
        if (dsr.Sets.ContainsKey(MarkerSet)) marked = dsr.WithSetsReplaced([marker], sameBuild: true);
        else marked = dsr with { Sets = new Dictionary<string, NftSet>(dsr.Sets) { [MarkerSet] = marker } };
        return new NftRuleset(ruleset.Tables.Select(t => t == dsr ? marked : t).ToList());
    }

    /// <summary>
    /// v2: the fingerprint is a sum of per-set and per-chain digests (a patch hashes only what it changed); v1 was
    /// one SHA-256 over everything. A v1 marker found at start is replaced without counting it as tampering.
    /// </summary>
    public static string MarkerComment(string fingerprint) => $"{MarkerVersion} {fingerprint}";

    /// <summary>The marker set carrying <paramref name="comment"/>.</summary>
    internal static NftSet Marker(string comment) => new(MarkerSet, "set", $"type mark; comment \"{comment}\";", SetContent.Empty);

    public const string MarkerVersion = "merlin v2";

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
    internal sealed class TextCache
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

    internal static ServicePlan? Plan(ServiceState service, SetPlan set, NftablesOptions options, bool dsrPossible, List<NftablesIssue> issues, ServicePlan? same)
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

    internal static SetPlan Analyze(IReadOnlyDictionary<RealServerKey, RealServerConfig> map, IReadOnlyDictionary<IPAddress, PhysicalAddress> macs,
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

    /// <summary>The seed as nft prints it back (hex, no leading zeros).</summary>
    internal static string Seed(NftablesOptions options) => "0x" + options.HashSeed.ToString("x", CultureInfo.InvariantCulture);

    internal static bool IsV6(IPAddress address) => address.AddressFamily == AddressFamily.InterNetworkV6;
}
