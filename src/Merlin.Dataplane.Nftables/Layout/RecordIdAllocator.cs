using System.Globalization;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>Record ids: one namespace for services, servers and lists (they share the state set's keys).</summary>
internal sealed class RecordIdAllocator(IEnumerable<uint> previous)
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
    public Dictionary<string, uint> Assign(Dictionary<string, RecordVotes> records)
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
