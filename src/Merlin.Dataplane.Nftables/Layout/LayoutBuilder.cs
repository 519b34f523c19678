using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Merlin.Hashing;
using Merlin.Model;
using Merlin.Reconciler;

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
}

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
    IReadOnlyList<IPAddress> DsrAddresses);

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

    public static Layout Build(LayoutInput input, NftablesOptions options)
    {
        var issues = new List<NftablesIssue>();
        var unresolved = new SortedSet<IPAddress>(Comparer<IPAddress>.Create(AddressOrder.Compare));
        var dsrAddresses = new HashSet<IPAddress>();
        var text = new TextCache();
        var services = input.Services.Values.OrderBy(s => s.Key, ServiceKeyComparer.Instance).ToList();
        bool dsrPossible = options.Interface is not null && input.OwnMac is not null;

        // 1. What each service forwards to. Services with the same servers (the ingress case: all of
        // them) share one analysis of them, and a set analyzed by the previous build under the same
        // options is reused while its servers' MACs are the same.
        var plans = new List<ServicePlan>();
        var sets = new Dictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, SetPlan>(ServerSetComparer.Instance);
        var setOptions = SetOptions(options, input.OwnMac);
        var cached = input.Previous.SetsFor == setOptions ? input.Previous.Sets : null;
        foreach (var service in services)
        {
            if (!sets.TryGetValue(service.Servers, out var set))
            {
                if (cached is null || !cached.TryGetValue(service.Servers, out set) || !set.SameMacs(input.Macs))
                    set = Analyze(service.Servers, input.Macs, options, dsrPossible, text);
                sets[service.Servers] = set;
                if (set.Dsr && dsrPossible)
                {
                    dsrAddresses.UnionWith(set.Addresses);
                    unresolved.UnionWith(set.Unresolved);
                }
            }
            var plan = Plan(service, set, options, dsrPossible, issues);
            if (plan is not null) plans.Add(plan);
        }

        // 2. Groups: one per distinct content, reusing the previous group a content's services used.
        var assignment = Assign(plans, input.Previous);
        var serviceGroups = new Dictionary<ServiceKey, string>();
        foreach (var plan in plans) serviceGroups[plan.Key] = assignment[plan.ContentKey];

        // 3. State records, their ids kept across layouts so an unchanged record is never rewritten.
        var (serviceIds, serverIds, listIds, stateContent) = Records(services, input, serviceGroups, sets);

        var groups = new Dictionary<string, GroupInfo>();
        foreach (var plan in plans) groups[assignment[plan.ContentKey]] = new GroupInfo(assignment[plan.ContentKey], plan.Shape, plan.ContentKey);

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
        var tables = new List<NftTable>();
        var dsrPlans = plans.Where(p => p.Dsr).ToList();
        var natPlans = plans.Where(p => !p.Dsr).ToList();
        if (services.Count > 0)
            tables.Add(DsrTable(dsrPlans, assignment, contents, stateContent, input.OwnMac, options));
        if (natPlans.Count > 0)
            tables.Add(NatTable(natPlans, assignment, contents, options));
        var ruleset = WithMarker(new NftRuleset(tables), options);

        var newAssignment = new Assignment(serviceGroups, groups, serviceIds, serverIds) { Contents = contents, ListIds = listIds, Sets = sets, SetsFor = setOptions };
        return new Layout(ruleset, newAssignment, issues, unresolved.ToList(), dsrAddresses.Order(AddressComparer).ToList());
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

    private sealed record ServicePlan(ServiceKey Key, bool Dsr, int Size, string Shape, string ContentKey, string Variant,
        IReadOnlyList<Backend> Backends);

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

    private static ServicePlan? Plan(ServiceState service, SetPlan set, NftablesOptions options, bool dsrPossible, List<NftablesIssue> issues)
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

        bool saddrOnly = service.Config.PersistenceTimeout > 0 ||
            (service.Config.Scheduler is "sh" or "mh" && !service.Config.Flags.HasFlag(SchedulerFlags.Flag2));
        string family = key.Family == IpFamily.V6 ? "6" : "4";
        string shape = set.Dsr ? $"dsr M={set.Size}" : $"nat{family} M={set.Size}";
        string variant = set.Dsr
            ? $"{family}{(saddrOnly ? "s" : "p")}{(service.Config.OnePacket ? "u" : "")}"
            : saddrOnly ? "s" : "p";
        return new ServicePlan(key, set.Dsr, set.Size, shape, shape + " " + set.Content, variant, set.Usable);
    }

    /// <summary>
    /// What a set of real servers forwards to: the same for every service that has exactly these
    /// servers. <paramref name="Bodies"/> are the servers' state record texts; <paramref name="Macs"/>
    /// the MAC each route server had (null: unknown) when the analysis was made.
    /// </summary>
    internal sealed record SetPlan(bool Dsr, int Members, int Size, string Content, IReadOnlyList<Backend> Usable,
        IReadOnlyList<(RealServerKey, string)> Issues, IReadOnlyList<IPAddress> Addresses, IReadOnlyList<IPAddress> Unresolved,
        (RealServerKey Key, string Body)[] Bodies, (IPAddress Address, PhysicalAddress? Mac)[] Macs)
    {
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

    /// <summary>
    /// The state records (see <see cref="StateRecords"/>) and their ids. Ids carry over from the
    /// previous layout: a service keeps its id; a real server record or a server list keeps the id
    /// that most of its users had (so a weight change in every service that shares a server rewrites
    /// that server's one record under its old id, and no service record). New records take the
    /// lowest ids no previous record held, so ids stay small however long the daemon runs.
    /// </summary>
    private static (Dictionary<ServiceKey, uint>, Dictionary<(ServiceKey, RealServerKey), uint>, Dictionary<ServiceKey, uint>, SetContent) Records(
        List<ServiceState> services, LayoutInput input, Dictionary<ServiceKey, string> groups,
        Dictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, SetPlan> sets)
    {
        var previous = input.Previous;
        var ids = new IdAllocator(previous.ServiceIds.Values.Concat(previous.ServerIds.Values).Concat(previous.ListIds.Values));

        // Services keep their ids.
        var serviceIds = new Dictionary<ServiceKey, uint>(services.Count);
        foreach (var service in services)
            if (previous.ServiceIds.TryGetValue(service.Key, out var id) && ids.Claim(id)) serviceIds[service.Key] = id;

        // Real server records: one per distinct body. Services with the same servers share the texts (their set's analysis has them).
        var bodies = new Dictionary<string, List<(ServiceKey, RealServerKey)>>(StringComparer.Ordinal);
        foreach (var service in services)
        {
            foreach (var (server, body) in sets[service.Servers].Bodies)
            {
                if (!bodies.TryGetValue(body, out var users)) bodies[body] = users = [];
                users.Add((service.Key, server));
            }
        }
        foreach (var service in services)
            if (!serviceIds.ContainsKey(service.Key)) serviceIds[service.Key] = ids.Fresh();
        var serverRecords = ids.Assign(bodies, previous.ServerIds);

        // Server lists: one per distinct set of server records.
        var serverIds = new Dictionary<(ServiceKey, RealServerKey), uint>(bodies.Sum(b => b.Value.Count));
        foreach (var (body, users) in bodies)
            foreach (var user in users) serverIds[user] = serverRecords[body];
        var setMembers = new Dictionary<(RealServerKey Key, string Body)[], string>(ReferenceEqualityComparer.Instance);
        var memberLists = new Dictionary<string, List<ServiceKey>>(StringComparer.Ordinal);
        foreach (var service in services)
        {
            if (service.Servers.Count == 0) continue;
            var texts = sets[service.Servers].Bodies;
            if (!setMembers.TryGetValue(texts, out var members))
                setMembers[texts] = members = string.Join(',', texts.Select(t => serverRecords[t.Body]).Order().Select(i => i.ToString(CultureInfo.InvariantCulture)));
            if (!memberLists.TryGetValue(members, out var users)) memberLists[members] = users = [];
            users.Add(service.Key);
        }
        var listRecords = ids.Assign(memberLists, previous.ListIds);
        var listIds = new Dictionary<ServiceKey, uint>();
        foreach (var (members, users) in memberLists)
            foreach (var user in users) listIds[user] = listRecords[members];

        var elements = new List<(string Key, string Element)>(services.Count + bodies.Count + memberLists.Count);
        foreach (var service in services)
        {
            var id = serviceIds[service.Key];
            elements.AddRange(StateRecords.Elements(id, StateRecords.Service(id, service.Key, service.Config, groups.GetValueOrDefault(service.Key),
                listIds.TryGetValue(service.Key, out var list) ? list : null)));
        }
        foreach (var (body, id) in serverRecords) elements.AddRange(StateRecords.Elements(id, StateRecords.Server(id, body)));
        foreach (var (members, id) in listRecords) elements.AddRange(StateRecords.Elements(id, StateRecords.List(id, members)));
        return (serviceIds, serverIds, listIds, KeyedContent.Of(elements));
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
        SetContent state, PhysicalAddress? ownMac, NftablesOptions options)
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
            sets["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(plans.Where(p => p.Key.Family == IpFamily.V4), groups));
            sets["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(plans.Where(p => p.Key.Family == IpFamily.V6), groups));
            chains["ingress"] = new("ingress", $"type filter hook ingress device \"{iface}\" priority 0; policy accept;",
            [
                $"ether daddr {own} ip daddr . meta l4proto . th dport vmap @svc4 comment \"merlin: IPv4 services\"",
                $"ether daddr {own} ip6 daddr . meta l4proto . th dport vmap @svc6 comment \"merlin: IPv6 services\"",
            ]);
            foreach (var group in plans.GroupBy(p => groups[p.ContentKey]))
            {
                var plan = group.First();
                var name = group.Key;
                sets[name] = new(name, "map", $"typeof numgen inc mod {plan.Size} : ether daddr; size {plan.Size};", contents[plan.ContentKey].Map);
                sets[name + "_live"] = new(name + "_live", "set", "type ether_addr;", contents[plan.ContentKey].Live!);
                foreach (var variant in group.Select(p => p.Variant).Distinct())
                {
                    var chain = $"{name}_{variant}";
                    chains[chain] = new(chain, null, DsrRules(name, plan.Size, variant, own, iface, seed));
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

    private static NftTable NatTable(List<ServicePlan> plans, Dictionary<string, string> groups, Dictionary<string, GroupContent> contents, NftablesOptions options)
    {
        var seed = Seed(options);
        var sets = new Dictionary<string, NftSet>
        {
            ["svc4"] = new("svc4", "map", "type ipv4_addr . inet_proto . inet_service : verdict;", Dispatch(plans.Where(p => p.Key.Family == IpFamily.V4), groups)),
            ["svc6"] = new("svc6", "map", "type ipv6_addr . inet_proto . inet_service : verdict;", Dispatch(plans.Where(p => p.Key.Family == IpFamily.V6), groups)),
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
                chains[chain] = new(chain, null,
                [
                    $"meta l4proto {{ tcp, udp, sctp }} dnat {ip} to {hash} map @{name} comment \"merlin: new connection\"",
                ]);
            }
        }
        return new NftTable("inet", options.NatTable, sets, chains);
    }

    private static SetContent Dispatch(IEnumerable<ServicePlan> plans, Dictionary<string, string> groups) =>
        KeyedContent.Of(plans.Select(p =>
        {
            var key = DispatchKey(p.Key);
            return (key, $"{key} : goto {groups[p.ContentKey]}_{p.Variant}");
        }));

    public static string DispatchKey(ServiceKey key) =>
        $"{key.Address} . {key.Protocol.ToString().ToLowerInvariant()} . {key.Port.ToString(CultureInfo.InvariantCulture)}";

    private static SetContent Slots(ServicePlan plan)
    {
        var values = new string?[plan.Size];
        var active = plan.Backends.Where(b => b.Weight > 0).ToList();
        if (active.Count == 0) return new SlotContent(values);
        var table = MaglevTable.Build(active.Select(b => (b.Id, b.Weight)).ToList(), plan.Size);
        for (int i = 0; i < table.Length; i++)
            if (table[i] >= 0) values[i] = active[table[i]].Value;
        return new SlotContent(values);
    }

    /// <summary>The seed as nft prints it back (hex, no leading zeros).</summary>
    internal static string Seed(NftablesOptions options) => "0x" + options.HashSeed.ToString("x", CultureInfo.InvariantCulture);

    internal static bool IsV6(IPAddress address) => address.AddressFamily == AddressFamily.InterNetworkV6;
}
