using Merlin.Dataplane.Abstractions;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// Work one layout build hands to the next, so a build after a small change formats only what the change touched.
/// Owned by whoever builds layouts one after another (the dataplane, a benchmark, a test) and passed to every
/// <see cref="LayoutBuilder.Build"/>.
/// <para>
/// Every entry is a pure function of its key, and a build checks the key before it takes an entry: a build with
/// this cache gives exactly what a build with an empty one gives, only faster. So the cache may run ahead of what
/// the kernel holds (a build whose write failed) without harm. Ids and group names are decisions, not work, and
/// are not here: they carry over in <see cref="Assignment"/>, from the layout the kernel holds.
/// </para>
/// <para>
/// Eviction: after a build the cache holds exactly what that build used, so a service that went away, a server
/// set or map content no service has any more, a record id no longer written are gone with the build after it.
/// </para>
/// </summary>
internal sealed class BuildCache
{
    private static readonly IReadOnlyDictionary<ServiceKey, ServiceEntry> NoServices = new Dictionary<ServiceKey, ServiceEntry>();

    /// <summary>
    /// The options the server set analyses, service plans and chains were made under: interface, own MAC and seed
    /// (<see cref="LayoutBuilder.SetOptions"/>). A build under other options makes those anew; the other entries
    /// do not depend on them.
    /// </summary>
    public string? Options { get; private set; }

    /// <summary>The services' keys in order: reused while the keys are the same (no sort).</summary>
    public IReadOnlyList<ServiceKey>? Order { get; private set; }

    /// <summary>Per service: what the last build made of it (<see cref="ServiceEntry"/> says when each piece is reusable).</summary>
    public IReadOnlyDictionary<ServiceKey, ServiceEntry> Services { get; private set; } = NoServices;

    /// <summary>
    /// Server set analyses by the set's content (servers and their configs), under <see cref="Options"/>; reusable
    /// while the route servers' MACs are the ones it saw (<see cref="LayoutBuilder.SetPlan.SameMacs"/>).
    /// </summary>
    public IReadOnlyDictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, LayoutBuilder.SetPlan>? Sets { get; private set; }

    /// <summary>
    /// Each group's map elements and servers' MACs by content key (kind, M and backends with their MACs: everything the
    /// slots depend on), so an unchanged map's Maglev table is not built again nor its elements hashed again.
    /// </summary>
    public IReadOnlyDictionary<string, GroupContent> Contents { get; private set; } = new Dictionary<string, GroupContent>();

    /// <summary>Per server set: its servers' record ids in order and the list record's text; reusable while the ids are the same.</summary>
    public IReadOnlyDictionary<LayoutBuilder.SetPlan, (uint[] Ids, string Text)>? Members { get; private set; }

    /// <summary>Server and list records by id: their text and elements; reusable while kind and body are the same.</summary>
    public IReadOnlyDictionary<uint, RecordText>? Texts { get; private set; }

    /// <summary>Group chains by (name, shape), under <see cref="Options"/>: the rules follow from those alone.</summary>
    public IReadOnlyDictionary<(string Name, string Shape), NftChain>? Chains { get; private set; }

    /// <summary>The last build's layout and the counts a patch of it needs (<see cref="LayoutPatch"/>); null before the first.</summary>
    internal LastBuild? Last { get; set; }

    /// <summary>Builds that were patches of the last one (tests, the benchmark).</summary>
    public long Patches { get; internal set; }

    /// <summary>What a build used, which is what the cache then holds.</summary>
    internal void Keep(string options, IReadOnlyList<ServiceKey> order, IReadOnlyDictionary<ServiceKey, ServiceEntry> services,
        IReadOnlyDictionary<IReadOnlyDictionary<RealServerKey, RealServerConfig>, LayoutBuilder.SetPlan> sets,
        IReadOnlyDictionary<string, GroupContent> contents, IReadOnlyDictionary<LayoutBuilder.SetPlan, (uint[] Ids, string Text)> members,
        IReadOnlyDictionary<uint, RecordText> texts, IReadOnlyDictionary<(string, string), NftChain> chains)
    {
        (Options, Order, Services, Sets, Contents, Members, Texts, Chains) = (options, order, services, sets, contents, members, texts, chains);
    }

    /// <summary>
    /// Whether <paramref name="now"/> is the state <paramref name="had"/> was: the same object (the dataplane
    /// keeps the state object of every service no operation named, so that is the usual answer and costs nothing),
    /// else the same content.
    /// </summary>
    internal static bool SameState(ServiceState had, ServiceState now) =>
        ReferenceEquals(had, now) ||
        (had.Key.Equals(now.Key) && (ReferenceEquals(had.Config, now.Config) || had.Config == now.Config) && ServerSetComparer.Instance.Equals(had.Servers, now.Servers));
}

/// <summary>
/// What one build made of one service. The next build reuses the plan (and the set) while the service's state is
/// the same (<see cref="BuildCache.SameState"/>) under the same options with the same MACs; the state record
/// while its id, group, list and config are the same; and the dispatch element while its group and variant are.
/// </summary>
internal sealed class ServiceEntry(ServiceState state, LayoutBuilder.SetPlan set)
{
    public ServiceState State { get; } = state;
    public LayoutBuilder.SetPlan Set { get; } = set;
    public LayoutBuilder.ServicePlan? Plan { get; init; }
    public ServiceRecord? Record { get; set; }
    public DispatchElement? Dispatch { get; set; }
}

/// <summary>A pinned DSR service and the MACs of the servers its flows may stay pinned to (<see cref="GroupContent.Macs"/>).</summary>
internal sealed record PinTarget(ServiceKey Service, SetContent Macs);

/// <summary>Server maps compared by content (services built apart still share an analysis).</summary>
internal sealed class ServerSetComparer : IEqualityComparer<IReadOnlyDictionary<RealServerKey, RealServerConfig>>
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
