using System.Text;
using Merlin.Dataplane.Nftables.Kernel;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// Turns rulesets into <c>nft -f</c> scripts. Each script is one transaction: the kernel applies all
/// of it or none. Commands come in an order the kernel accepts within one transaction: element
/// deletions, chain flushes, set and chain deletions, then chain and set creations, rules, element
/// additions. Nothing that did not change is written: an unchanged map is not mentioned, a changed
/// one only by the elements that differ (<c>add element</c> of an existing key fails with "File
/// exists", so a changed element is a delete and an add).
/// </summary>
internal static class ScriptRenderer
{
    /// <summary>Elements per <c>add element</c> command: keeps lines readable; all are in the one transaction anyway.</summary>
    internal const int ElementsPerCommand = 1024;

    /// <summary>The script that creates <paramref name="ruleset"/> from nothing.</summary>
    public static string Full(NftRuleset ruleset) => Diff(NftRuleset.Empty, ruleset);

    /// <summary>The script that turns <paramref name="from"/> (what the kernel holds) into <paramref name="to"/>; empty if they are the same.</summary>
    public static string Diff(NftRuleset from, NftRuleset to)
    {
        var script = new Script();
        foreach (var table in from.Tables)
            if (to.Table(table.Family, table.Name) is null) script.Removals.AppendLine($"delete table {table.Id}");
        foreach (var table in to.Tables)
        {
            if (from.Table(table.Family, table.Name) is { } old) DiffTable(script, old, table);
            else CreateTable(script, table);
        }
        return script.ToString();
    }

    /// <summary>
    /// The script that replaces whatever the kernel holds in our tables (<paramref name="existing"/>,
    /// as read over netlink) with <paramref name="to"/>: the repair after a change made behind our
    /// back. Every chain is flushed and deleted, every set deleted, except the dynamic flow maps when
    /// they are still declared as we want: pinned flows survive a repair.
    /// </summary>
    public static string Rewrite(IReadOnlyList<KernelTable> existing, NftRuleset to)
    {
        var script = new Script();
        foreach (var kernel in existing)
        {
            var table = to.Table(kernel.Family, kernel.Name);
            if (table is null)
            {
                script.Removals.AppendLine($"delete table {kernel.Family} {kernel.Name}");
                continue;
            }
            var keep = new HashSet<string>(StringComparer.Ordinal);
            foreach (var set in kernel.Sets)
                if (table.Sets.TryGetValue(set.Name, out var want) && want.Dynamic && Matches(set, want)) keep.Add(set.Name);
            foreach (var chain in kernel.Chains) script.Flushes.AppendLine($"flush chain {table.Id} {chain.Name}");
            foreach (var set in kernel.Sets)
                if (!keep.Contains(set.Name) && !set.Anonymous) script.SetDeletions.AppendLine($"delete {(set.DataLength > 0 || (set.Flags & 0x8) != 0 ? "map" : "set")} {table.Id} {set.Name}");
            foreach (var chain in kernel.Chains) script.ChainDeletions.AppendLine($"delete chain {table.Id} {chain.Name}");
            script.Tables.AppendLine($"add table {table.Id}");
            foreach (var chain in table.OrderedChains) AddChain(script, table, chain);
            foreach (var set in table.OrderedSets)
                if (!keep.Contains(set.Name)) AddSet(script, table, set);
        }
        foreach (var table in to.Tables)
            if (!existing.Any(k => k.Family == table.Family && k.Name == table.Name)) CreateTable(script, table);
        return script.ToString();
    }

    /// <summary>Whether a kernel set is still declared as <paramref name="want"/> says (for the flow maps: size and timeout).</summary>
    internal static bool Matches(KernelSet set, NftSet want)
    {
        var size = Between(want.Declaration, "size ", ";");
        var timeout = Between(want.Declaration, "timeout ", "s;");
        return (size is null || set.Size.ToString(System.Globalization.CultureInfo.InvariantCulture) == size)
            && (timeout is null || (set.TimeoutMs / 1000).ToString(System.Globalization.CultureInfo.InvariantCulture) == timeout);
    }

    private static string? Between(string text, string start, string end)
    {
        int at = text.IndexOf(start, StringComparison.Ordinal);
        if (at < 0) return null;
        at += start.Length;
        int stop = text.IndexOf(end, at, StringComparison.Ordinal);
        return stop < 0 ? null : text[at..stop];
    }

    private static void CreateTable(Script script, NftTable table)
    {
        script.Tables.AppendLine($"add table {table.Id}");
        foreach (var chain in table.OrderedChains) AddChain(script, table, chain);
        foreach (var set in table.OrderedSets) AddSet(script, table, set);
    }

    private static void DiffTable(Script script, NftTable from, NftTable to)
    {
        // Sets that go away or are declared differently; a redeclared set is deleted and added again.
        var redeclared = new HashSet<string>(StringComparer.Ordinal);
        foreach (var set in from.OrderedSets)
            if (!to.Sets.TryGetValue(set.Name, out var want) || want.Kind != set.Kind || want.Declaration != set.Declaration) redeclared.Add(set.Name);

        // Chains whose rules are rewritten: changed ones, and unchanged ones naming a set that is
        // deleted (the kernel refuses to delete a set a rule still uses).
        var rewritten = new List<NftChain>();
        var removed = new List<NftChain>();
        foreach (var chain in from.OrderedChains)
        {
            if (!to.Chains.TryGetValue(chain.Name, out var want) || want.Base != chain.Base) { removed.Add(chain); continue; }
            if (!want.SameAs(chain) || redeclared.Any(chain.References)) rewritten.Add(want);
        }

        foreach (var set in from.OrderedSets)
        {
            if (redeclared.Contains(set.Name) || set.Dynamic) continue;
            var (delete, _) = SetContent.Diff(set.Content, to.Sets[set.Name].Content);
            AppendElements(script.ElementDeletions, "delete element", to, set.Name, delete);
        }
        foreach (var chain in rewritten.Concat(removed)) script.Flushes.AppendLine($"flush chain {to.Id} {chain.Name}");
        foreach (var name in redeclared.Order(StringComparer.Ordinal)) script.SetDeletions.AppendLine($"delete {from.Sets[name].Kind} {to.Id} {name}");
        foreach (var chain in removed) script.ChainDeletions.AppendLine($"delete chain {to.Id} {chain.Name}");

        foreach (var chain in to.OrderedChains)
        {
            if (!from.Chains.TryGetValue(chain.Name, out var had) || had.Base != chain.Base) AddChain(script, to, chain);
        }
        foreach (var chain in rewritten) AddRules(script, to, chain);
        foreach (var set in to.OrderedSets)
        {
            if (!from.Sets.ContainsKey(set.Name) || redeclared.Contains(set.Name)) { AddSet(script, to, set); continue; }
            if (set.Dynamic) continue;
            var (_, add) = SetContent.Diff(from.Sets[set.Name].Content, set.Content);
            AppendElements(script.ElementAdditions, "add element", to, set.Name, add);
        }
    }

    private static void AddChain(Script script, NftTable table, NftChain chain)
    {
        script.Chains.AppendLine(chain.Base is null ? $"add chain {table.Id} {chain.Name}" : $"add chain {table.Id} {chain.Name} {{ {chain.Base} }}");
        AddRules(script, table, chain);
    }

    private static void AddRules(Script script, NftTable table, NftChain chain)
    {
        foreach (var rule in chain.Rules) script.Rules.AppendLine($"add rule {table.Id} {chain.Name} {rule}");
    }

    private static void AddSet(Script script, NftTable table, NftSet set)
    {
        script.Sets.AppendLine($"add {set.Kind} {table.Id} {set.Name} {{ {set.Declaration} }}");
        if (set.Dynamic) return;
        AppendElements(script.Sets, "add element", table, set.Name, set.Content.Elements().Select(e => e.Element));
    }

    private static void AppendElements(StringBuilder to, string command, NftTable table, string set, IEnumerable<string> elements)
    {
        var batch = new List<string>(ElementsPerCommand);
        foreach (var element in elements)
        {
            batch.Add(element);
            if (batch.Count == ElementsPerCommand) Flush();
        }
        Flush();

        void Flush()
        {
            if (batch.Count == 0) return;
            to.Append(command).Append(' ').Append(table.Id).Append(' ').Append(set).Append(" { ");
            to.AppendJoin(", ", batch);
            to.Append(" }\n");
            batch.Clear();
        }
    }

    /// <summary>The sections of a transaction, in the order the kernel must see them.</summary>
    private sealed class Script
    {
        public readonly StringBuilder Removals = new();
        public readonly StringBuilder ElementDeletions = new();
        public readonly StringBuilder Flushes = new();
        public readonly StringBuilder SetDeletions = new();
        public readonly StringBuilder ChainDeletions = new();
        public readonly StringBuilder Tables = new();
        public readonly StringBuilder Chains = new();
        public readonly StringBuilder Sets = new();
        public readonly StringBuilder Rules = new();
        public readonly StringBuilder ElementAdditions = new();

        public override string ToString() =>
            string.Concat(Removals, ElementDeletions, Flushes, SetDeletions, ChainDeletions, Tables, Chains, Sets, Rules, ElementAdditions);
    }
}
