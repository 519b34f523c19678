using Merlin.Dataplane.Abstractions;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// What the last build made, with the counts a patch of it needs: how many services have each server set, each server
/// record body and each map content. Kept in <see cref="BuildCache.Last"/>; the counts are the patch's own (changed in
/// place by it), nothing else reads them.
/// </summary>
internal sealed record LastBuild(Layout Layout, long? MacsVersion, Dictionary<LayoutBuilder.SetPlan, int> SetUsers,
    Dictionary<string, int> BodyUsers, Dictionary<string, int> ContentUsers);

/// <summary>
/// A build after a small change that works on what the change touched only: the last layout with the touched services'
/// maps, records and state elements replaced. It gives exactly what <see cref="LayoutBuilder.Build"/> gives (a property
/// test holds the two equal), and only where that is plain to see without the whole build's decisions: each touched
/// service keeps its servers (their weights and configs may change), its group's kind, size and hash variant, and is
/// the only service with its old and with its new server set, map content and server records. Then no group name and
/// no record id can move: each touched map is edited in place under its name and each changed server record keeps its
/// id. Anything else — services or servers added or removed, a server or map shared with another service, MACs that
/// changed, issues, md-tables, another kernel state than the last build's — returns null, and the whole build runs.
/// <para>
/// At 10,000 services × 10 servers the whole build after one weight change took 370–560 ms and its diff 55–85 ms; a
/// patch takes ~5 ms, most of it the walk of the services by reference (docs/performance.md).
/// </para>
/// </summary>
internal static class LayoutPatch
{
    /// <summary>More touched services than this (or than an eighth of all) and the whole build is as cheap.</summary>
    private const int MaxTouched = 64;

    private sealed record Touched(ServiceKey Key, ServiceState State, ServiceEntry Entry, LayoutBuilder.SetPlan Set, LayoutBuilder.ServicePlan Plan)
    {
        /// <summary>A DSR map's servers' MACs (the pin targets): the old object, which they must equal.</summary>
        public SetContent? Macs { get; init; }
    }

    public static Layout? TryBuild(LayoutInput input, NftablesOptions options, BuildCache cache, string setOptions, Phases? phases = null)
    {
        var step = phases?.Measure("patch: walk");
        if (cache.Last is not { } last || input.MacsVersion is null || last.MacsVersion != input.MacsVersion) return null;
        if (!ReferenceEquals(input.Previous, last.Layout.Assignment) || cache.Options != setOptions || cache.Sets is null) return null;
        if (input.Services.Count != cache.Services.Count || input.Previous.ServerRecordIds is not { } recordIds
            || input.Previous.IdsOf is not { } idsOf || input.Previous.ServerSets is not { } serverSets || cache.Texts is null || cache.Members is null) return null;

        // 1. Which services changed: a walk by reference (the dataplane keeps the state object of every service no
        // operation named), content compared only where the object is new.
        var touched = new List<Touched>();
        var same = new List<(ServiceKey Key, ServiceState State, ServiceEntry Entry)>();
        int limit = Math.Min(MaxTouched, Math.Max(1, input.Services.Count / 8));
        foreach (var (key, state) in input.Services)
        {
            if (!cache.Services.TryGetValue(key, out var entry)) return null;
            if (ReferenceEquals(entry.State, state)) continue;
            if (touched.Count + same.Count >= limit) return null;
            if (BuildCache.SameState(entry.State, state)) { same.Add((key, state, entry)); continue; }
            touched.Add(new Touched(key, state, entry, entry.Set, null!));
        }
        if (touched.Count == 0 && same.Count == 0) return null;
        if (last.Layout.Ruleset.Table("netdev", options.DsrTable)?.Sets.GetValueOrDefault(LayoutBuilder.StateSet)?.Content is not KeyedContent) return null;

        // 2. Each touched service's new set and plan, and whether the patch can say what the whole build would.
        bool dsrPossible = options.Interface is not null && input.OwnMac is not null;
        var text = new LayoutBuilder.TextCache();
        var newContents = new HashSet<string>(StringComparer.Ordinal);
        var newBodies = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < touched.Count; i++)
        {
            var (key, state, entry, old, _) = touched[i];
            if (key.IsFirewallMark || entry.Plan is not { Table: null } oldPlan || old.Issues.Count > 0) return null;
            LayoutBuilder.SetPlan set;
            if (cache.Sets.TryGetValue(state.Servers, out var known))
            {
                if (!ReferenceEquals(known, old)) return null;   // another service's set: shared from now on
                set = old;
            }
            else
            {
                if (last.SetUsers.GetValueOrDefault(old) != 1) return null;
                set = LayoutBuilder.Analyze(state.Servers, input.Macs, options, dsrPossible, text);
                if (set.Issues.Count > 0 || set.Unresolved.Count > 0 || old.Unresolved.Count > 0 || set.Bodies.Length != old.Bodies.Length) return null;
                if (set.Dsr && !set.Addresses.ToHashSet().SetEquals(old.Addresses)) return null;
                for (int b = 0; b < set.Bodies.Length; b++)
                {
                    var (server, body) = set.Bodies[b];
                    if (server != old.Bodies[b].Key) return null;
                    if (body == old.Bodies[b].Body) continue;
                    if (last.BodyUsers.GetValueOrDefault(old.Bodies[b].Body) != 1 || recordIds.ContainsKey(body) || !newBodies.Add(body)) return null;
                }
            }
            var issues = new List<NftablesIssue>();
            var plan = LayoutBuilder.Plan(state, set, options, dsrPossible, issues, null);
            if (plan is not { Table: null } || issues.Count > 0) return null;
            if (plan.Shape != oldPlan.Shape || plan.Variant != oldPlan.Variant || plan.Dsr != oldPlan.Dsr) return null;
            SetContent? macs = null;
            if (plan.ContentKey != oldPlan.ContentKey)
            {
                if (last.ContentUsers.GetValueOrDefault(oldPlan.ContentKey) != 1 || last.ContentUsers.ContainsKey(plan.ContentKey) || !newContents.Add(plan.ContentKey)) return null;
                if (plan.Dsr)
                {
                    // The pinned flows' servers: the same MACs keep the same object, so the layout's pin targets stay as they were.
                    macs = cache.Contents[oldPlan.ContentKey].Macs;
                    if (macs is null || KeyedContent.Of(plan.Backends.Select(b => (b.Mac!, b.Mac!))).Hash != macs.Hash) return null;
                }
            }
            touched[i] = touched[i] with { Set = set, Plan = plan, Macs = macs };
        }

        // 3. Nothing can move: the pieces of the touched services, made anew where their text changed.
        step?.Dispose();
        step = phases?.Measure("patch: pieces");
        var previous = input.Previous;
        // The cache's own dictionaries are changed in place (nothing but builds reads them, and nothing can fail from
        // here on); the assignment's are layered over the last ones (LayeredDictionary), since the layout the kernel
        // holds keeps its own until this one is written.
        var entries = Mutable(cache.Services);
        var sets = Mutable(cache.Sets);
        var contents = Mutable(cache.Contents);
        var members = Mutable(cache.Members);
        var texts = Mutable(cache.Texts);
        var groups = new List<KeyValuePair<string, GroupInfo>>();
        var (recordsPut, recordsGone) = (new List<KeyValuePair<string, uint>>(), new List<string>());
        var (idsPut, idsGone) = (new List<KeyValuePair<LayoutBuilder.SetPlan, uint[]>>(), new List<LayoutBuilder.SetPlan>());
        var setsPut = new List<KeyValuePair<ServiceKey, LayoutBuilder.SetPlan>>();
        var removeState = new List<string>();
        var putState = new List<(string Key, string Element)>();
        var maps = new Dictionary<string, (bool Dsr, SetContent Map)>(StringComparer.Ordinal);
        foreach (var (key, state, entry) in same)
            entries[key] = new ServiceEntry(state, entry.Set) { Plan = entry.Plan, Record = entry.Record, Dispatch = entry.Dispatch };
        foreach (var t in touched)
        {
            var (key, state, entry, set, plan) = (t.Key, t.State, t.Entry, t.Set, t.Plan);
            var old = entry.Set;
            var oldPlan = entry.Plan!;
            if (!ReferenceEquals(set, old))
            {
                var ids = idsOf[old];
                for (int b = 0; b < set.Bodies.Length; b++)
                {
                    var (oldBody, body) = (old.Bodies[b].Body, set.Bodies[b].Body);
                    if (body == oldBody) continue;
                    recordsGone.Add(oldBody);
                    recordsPut.Add(new(body, ids[b]));
                    last.BodyUsers.Remove(oldBody);
                    last.BodyUsers[body] = 1;
                    var record = new RecordText('r', body, [.. StateRecords.Elements(ids[b], StateRecords.Server(ids[b], body))]);
                    removeState.AddRange(texts[ids[b]].Elements.Select(e => e.Key));
                    putState.AddRange(record.Elements);
                    texts[ids[b]] = record;
                }
                idsGone.Add(old);
                idsPut.Add(new(set, ids));
                setsPut.Add(new(key, set));
                sets.Remove(entry.State.Servers);
                sets[state.Servers] = set;
                members[set] = members[old];
                members.Remove(old);
                last.SetUsers.Remove(old);
                last.SetUsers[set] = 1;
            }
            var serviceRecord = entry.Record!;
            if (!(ReferenceEquals(entry.State.Config, state.Config) || entry.State.Config == state.Config))
            {
                var id = serviceRecord.Id;
                serviceRecord = serviceRecord with { Elements = [.. StateRecords.Elements(id, StateRecords.Service(id, key, state.Config, serviceRecord.Group, serviceRecord.List))] };
                removeState.AddRange(entry.Record!.Elements.Select(e => e.Key));
                putState.AddRange(serviceRecord.Elements);
            }
            if (plan.ContentKey != oldPlan.ContentKey)
            {
                var group = previous.ServiceGroups[key];
                contents.Remove(oldPlan.ContentKey);
                contents[plan.ContentKey] = new GroupContent(TableRenderer.Slots(plan), t.Macs);
                groups.Add(new(group, new GroupInfo(group, plan.Shape, plan.ContentKey)));
                maps[group] = (plan.Dsr, contents[plan.ContentKey].Map);
                last.ContentUsers.Remove(oldPlan.ContentKey);
                last.ContentUsers[plan.ContentKey] = 1;
            }
            entries[key] = new ServiceEntry(state, set) { Plan = plan, Record = serviceRecord, Dispatch = entry.Dispatch };
        }

        // 4. The ruleset: the touched maps and the state set replaced, the marker computed again.
        step?.Dispose();
        step = phases?.Measure("patch: tables");
        var ruleset = last.Layout.Ruleset;
        var tables = new List<NftTable>(ruleset.Tables.Count);
        foreach (var table in ruleset.Tables)
        {
            bool dsrTable = table.Family == "netdev";
            var changed = maps.Where(m => m.Value.Dsr == dsrTable).ToList();
            if (changed.Count == 0 && !(dsrTable && (removeState.Count > 0 || putState.Count > 0)))
            {
                tables.Add(table);
                continue;
            }
            var replaced = changed.ConvertAll(m => table.Sets[m.Key] with { Content = m.Value.Map });
            if (dsrTable && (removeState.Count > 0 || putState.Count > 0))
            {
                var state = table.Sets[LayoutBuilder.StateSet];
                replaced.Add(state with { Content = ((KeyedContent)state.Content).Patched(removeState, putState) });
            }
            tables.Add(table.WithSetsReplaced(replaced));
        }
        step?.Dispose();
        step = phases?.Measure("patch: marker");
        var layoutRuleset = LayoutBuilder.WithMarker(new NftRuleset(tables), options);
        step?.Dispose();

        var assignment = new Assignment(previous.ServiceGroups, LayeredDictionary<string, GroupInfo>.With(previous.Groups, groups, []), previous.ServiceIds, previous.ServerIds)
        {
            ListIds = previous.ListIds,
            ServerRecordIds = LayeredDictionary<string, uint>.With(recordIds, recordsPut, recordsGone),
            ServerSets = LayeredDictionary<ServiceKey, LayoutBuilder.SetPlan>.With(serverSets, setsPut, []),
            IdsOf = LayeredDictionary<LayoutBuilder.SetPlan, uint[]>.With(idsOf, idsPut, idsGone),
        };
        var layout = last.Layout with { Ruleset = layoutRuleset, Assignment = assignment };
        cache.Keep(setOptions, cache.Order!, entries, sets, contents, members, texts, cache.Chains!);
        cache.Last = last with { Layout = layout };
        cache.Patches++;
        return layout;
    }

    private static Dictionary<TKey, TValue> Mutable<TKey, TValue>(IReadOnlyDictionary<TKey, TValue> source) where TKey : notnull =>
        source as Dictionary<TKey, TValue> ?? Copy(source);

    private static Dictionary<TKey, TValue> Copy<TKey, TValue>(IReadOnlyDictionary<TKey, TValue> source) where TKey : notnull =>
        source is Dictionary<TKey, TValue> dictionary ? new Dictionary<TKey, TValue>(dictionary, dictionary.Comparer) : new Dictionary<TKey, TValue>(source);
}
