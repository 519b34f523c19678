using System.Globalization;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// Names the groups of a layout: services with the same content (kind, M, backends) share one
/// group, whose name carries over from the previous layout so an unchanged map is never rewritten
/// and a changed one is edited in place.
/// </summary>
internal static class GroupPlanner
{
    /// <summary>Content key → group name. Deterministic: contents with more services choose first.</summary>
    public static Dictionary<string, string> Assign(List<LayoutBuilder.ServicePlan> plans, Assignment previous)
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
}
