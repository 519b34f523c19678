using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// What a layout decided that the next one must carry over: record ids and which service uses which group. It
/// belongs to the layout the kernel holds (adoption rebuilds it from the kernel's state records), unlike the
/// <see cref="BuildCache"/>, which only saves work and never decides an id or a name.
/// </summary>
internal sealed record Assignment(
    IReadOnlyDictionary<ServiceKey, string> ServiceGroups,
    IReadOnlyDictionary<string, GroupInfo> Groups,
    IReadOnlyDictionary<ServiceKey, uint> ServiceIds,
    IReadOnlyDictionary<(ServiceKey, RealServerKey), uint> ServerIds)
{
    public static readonly Assignment Empty = new(
        new Dictionary<ServiceKey, string>(), new Dictionary<string, GroupInfo>(),
        new Dictionary<ServiceKey, uint>(), new Dictionary<(ServiceKey, RealServerKey), uint>());

    /// <summary>The id of each service's server-list record (services without servers have none).</summary>
    public IReadOnlyDictionary<ServiceKey, uint> ListIds { get; init; } = new Dictionary<ServiceKey, uint>();

    // A build writes the server ids in a compact form instead of ServerIds (one entry per service and server):
    // per server set, and which set each service had. Null after adoption, which has only ServerIds.

    /// <summary>Real server record body → id.</summary>
    public IReadOnlyDictionary<string, uint>? ServerRecordIds { get; init; }

    /// <summary>The server set (its analysis) each service had.</summary>
    public IReadOnlyDictionary<ServiceKey, LayoutBuilder.SetPlan>? ServerSets { get; init; }

    /// <summary>Per server set: the record id of each of its servers, in the order of <see cref="LayoutBuilder.SetPlan.Bodies"/>.</summary>
    public IReadOnlyDictionary<LayoutBuilder.SetPlan, uint[]>? IdsOf { get; init; }
}
