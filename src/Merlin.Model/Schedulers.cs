namespace Merlin.Model;

/// <summary>The kernel's IPVS schedulers and the names their flag bits go by.</summary>
public static class Schedulers
{
    public static readonly IReadOnlyList<string> All =
        ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"];

    // Flag names per scheduler, as ipvsadm spells them. The kernel reuses the same three bits.
    private static readonly Dictionary<string, (string Name, SchedulerFlags Bit)[]> NamedFlags = new()
    {
        ["sh"] = [("sh-fallback", SchedulerFlags.Flag1), ("sh-port", SchedulerFlags.Flag2)],
        // md-table is Merlin's, not the kernel's: the nftables dataplane looks flows up in the minimal-disruption
        // table the API stores (docs/architecture.md); IPVS's mh does not read the bit and hashes as plain mh.
        ["mh"] = [("mh-fallback", SchedulerFlags.Flag1), ("mh-port", SchedulerFlags.Flag2), ("md-table", SchedulerFlags.Flag3)],
    };

    /// <summary>Whether the service's flows are looked up in a stored minimal-disruption table instead of Maglev (scheduler mh with md-table).</summary>
    public static bool UsesStoredTable(ServiceConfig config) =>
        config.Scheduler == "mh" && config.Flags.HasFlag(SchedulerFlags.Flag3);

    // The original merlin passed flags through as flag-1/2/3 regardless of scheduler.
    private static readonly (string Name, SchedulerFlags Bit)[] Aliases =
        [("flag-1", SchedulerFlags.Flag1), ("flag-2", SchedulerFlags.Flag2), ("flag-3", SchedulerFlags.Flag3)];

    public static bool IsKnown(string scheduler) => All.Contains(scheduler);

    public static ValidationError? ParseScheduler(string? scheduler, string field, out string parsed)
    {
        parsed = (scheduler ?? "").Trim();
        if (parsed.Length == 0) return new(field, "required (one of " + string.Join(", ", All) + ")");
        if (!IsKnown(parsed)) return new(field, $"{Validation.Quote(parsed)} is not an IPVS scheduler (one of {string.Join(", ", All)})");
        return null;
    }

    public static ValidationError? ParseFlags(string scheduler, IEnumerable<string> flags, string field, out SchedulerFlags parsed)
    {
        parsed = SchedulerFlags.None;
        var named = NamedFlags.GetValueOrDefault(scheduler, []);
        foreach (var raw in flags)
        {
            var flag = raw.Trim().ToLowerInvariant();
            if (flag.Length == 0) continue;
            var bit = named.FirstOrDefault(f => f.Name == flag).Bit;
            if (bit == SchedulerFlags.None)
            {
                var alias = Aliases.FirstOrDefault(f => f.Name == flag).Bit;
                // An alias is only meaningful where the scheduler gives that bit a meaning.
                if (alias != SchedulerFlags.None && named.Any(f => f.Bit == alias)) bit = alias;
            }
            if (bit == SchedulerFlags.None)
            {
                var allowed = named.Length == 0
                    ? $"scheduler {Validation.Quote(scheduler)} takes no flags"
                    : $"scheduler {Validation.Quote(scheduler)} takes {string.Join(", ", named.Select(f => f.Name))}";
                return new(field, $"{Validation.Quote(raw)} is not a flag of this scheduler ({allowed})");
            }
            parsed |= bit;
        }
        return null;
    }

    /// <summary>
    /// The original merlin's spelling (flag-1, flag-2, flag-3), which is what goes into the store: a Go
    /// merlin sharing the store during an upgrade ignores names it does not know, and would then hash
    /// differently from us.
    /// </summary>
    public static IReadOnlyList<string> AliasNames(SchedulerFlags flags) =>
        Aliases.Where(a => flags.HasFlag(a.Bit)).Select(a => a.Name).ToList();

    public static IReadOnlyList<string> FlagNames(string scheduler, SchedulerFlags flags)
    {
        var named = NamedFlags.GetValueOrDefault(scheduler, []);
        var result = new List<string>();
        foreach (var bit in new[] { SchedulerFlags.Flag1, SchedulerFlags.Flag2, SchedulerFlags.Flag3 })
        {
            if (!flags.HasFlag(bit)) continue;
            var name = named.FirstOrDefault(f => f.Bit == bit).Name ?? Aliases.First(a => a.Bit == bit).Name;
            result.Add(name);
        }
        return result;
    }
}
