using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// The state records of a layout (see <see cref="StateRecords"/>) and their ids, carried over from
/// the previous layout by <see cref="RecordIdAllocator"/>.
/// </summary>
internal static class StateRecordPlanner
{
    /// <summary>What <see cref="Plan"/> gives: ids, the state set, and what the next build reuses.</summary>
    public sealed record Result(Dictionary<ServiceKey, uint> ServiceIds, Dictionary<ServiceKey, uint> ListIds, SetContent State,
        Dictionary<string, uint> ServerRecordIds, Dictionary<LayoutBuilder.SetPlan, uint[]> IdsOf, Dictionary<LayoutBuilder.SetPlan, (uint[] Ids, string Text)> Members, Dictionary<uint, RecordText> Texts)
    {
        /// <summary>Each server record body and how many services have it (what a patch of this layout must know, <see cref="LayoutPatch"/>).</summary>
        public Dictionary<string, int> BodyUsers { get; init; } = [];
    }

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
    public static Result Plan(List<ServiceState> services, LayoutBuilder.SetPlan[] setOf, LayoutBuilder.SetPlan?[] setBefore, ServiceEntry?[] cached,
        ServiceEntry[] entries, LayoutInput input, BuildCache cache, Dictionary<ServiceKey, string> groups)
    {
        var previous = input.Previous;
        var ids = new RecordIdAllocator(previous.ServiceIds.Values.Concat(previous.ServerRecordIds is { } had ? had.Values : previous.ServerIds.Values).Concat(previous.ListIds.Values));

        // Services keep their ids.
        var serviceIds = new Dictionary<ServiceKey, uint>(services.Count);
        foreach (var service in services)
            if (previous.ServiceIds.TryGetValue(service.Key, out var id) && ids.Claim(id)) serviceIds[service.Key] = id;

        // The services of each distinct server set, and of those, which set each had before.
        var users = new Dictionary<LayoutBuilder.SetPlan, List<int>>(ReferenceEqualityComparer.Instance);
        var distinct = new List<LayoutBuilder.SetPlan>();
        for (int k = 0; k < services.Count; k++)
        {
            if (!users.TryGetValue(setOf[k], out var list)) { users[setOf[k]] = list = []; distinct.Add(setOf[k]); }
            list.Add(k);
        }

        // Real server records: one per distinct body, voted for by every (service, server) that has it.
        var oldIds = new Dictionary<LayoutBuilder.SetPlan, uint[]>(ReferenceEqualityComparer.Instance);
        uint[] OldIds(LayoutBuilder.SetPlan set)
        {
            if (previous.IdsOf is { } known && known.TryGetValue(set, out var result)) return result;
            if (oldIds.TryGetValue(set, out result)) return result;
            result = new uint[set.Bodies.Length];
            for (int i = 0; i < result.Length; i++) result[i] = previous.ServerRecordIds!.GetValueOrDefault(set.Bodies[i].Body);
            return oldIds[set] = result;
        }
        var bodies = new Dictionary<string, RecordVotes>(StringComparer.Ordinal);
        var votesOf = new Dictionary<LayoutBuilder.SetPlan, RecordVotes[]>(ReferenceEqualityComparer.Instance);
        var byOldSet = new Dictionary<LayoutBuilder.SetPlan, int>(ReferenceEqualityComparer.Instance);
        foreach (var set in distinct)
        {
            var members = users[set];
            var mine = votesOf[set] = new RecordVotes[set.Bodies.Length];
            byOldSet.Clear();
            foreach (var k in members)
                if (setBefore[k] is { } old && previous.ServerRecordIds is not null) byOldSet[old] = byOldSet.GetValueOrDefault(old) + 1;
            for (int i = 0; i < set.Bodies.Length; i++)
            {
                var (server, body) = set.Bodies[i];
                if (!bodies.TryGetValue(body, out var votes)) bodies[body] = votes = new RecordVotes();
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
        var idsOf = new Dictionary<LayoutBuilder.SetPlan, uint[]>(distinct.Count, ReferenceEqualityComparer.Instance);
        foreach (var (set, votes) in votesOf) idsOf[set] = Array.ConvertAll(votes, v => v.Id);

        // Server lists: one per distinct set of server records.
        var memberTexts = new Dictionary<LayoutBuilder.SetPlan, (uint[] Ids, string Text)>(ReferenceEqualityComparer.Instance);
        var memberLists = new Dictionary<string, List<ServiceKey>>(StringComparer.Ordinal);
        foreach (var set in distinct)
        {
            if (set.Bodies.Length == 0) continue;
            var sorted = (uint[])idsOf[set].Clone();
            Array.Sort(sorted);
            string text = cache.Members is { } known && known.TryGetValue(set, out var was) && was.Ids.AsSpan().SequenceEqual(sorted)
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
            var record = cached[k] is { Record: { } r } entry && r.Id == id && r.Group == group && r.List == list
                && (ReferenceEquals(entry.State.Config, service.Config) || entry.State.Config == service.Config)
                ? r
                : new ServiceRecord(id, group, list, [.. StateRecords.Elements(id, StateRecords.Service(id, service.Key, service.Config, group, list))]);
            entries[k].Record = record;
            elements.AddRange(record.Elements);
        }
        RecordText Text(char kind, uint id, string body, Func<uint, string, string> format)
        {
            if (cache.Texts is { } known && known.TryGetValue(id, out var was) && was.Kind == kind && was.Body == body) return texts[id] = was;
            return texts[id] = new RecordText(kind, body, [.. StateRecords.Elements(id, format(id, body))]);
        }
        foreach (var (body, id) in serverRecords) elements.AddRange(Text('r', id, body, StateRecords.Server).Elements);
        foreach (var (members, id) in listRecords) elements.AddRange(Text('l', id, members, StateRecords.List).Elements);
        var bodyUsers = new Dictionary<string, int>(bodies.Count, StringComparer.Ordinal);
        foreach (var (body, votes) in bodies) bodyUsers[body] = votes.Users;
        return new Result(serviceIds, listIds, KeyedContent.Of(elements), serverRecords, idsOf, memberTexts, texts) { BodyUsers = bodyUsers };
    }
}
