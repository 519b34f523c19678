using System.Runtime.CompilerServices;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Compares our tables in the kernel with what we wrote, cheaply: the ruleset generation first (one
/// netlink message); our tables' structure only if someone else committed since our last look; and a
/// budget of set elements per pass, in rotation. It reports what differs (<see cref="TableDrift"/>);
/// repairing is the caller's.
/// </summary>
internal sealed class TableAuditor(NftablesOptions options, INftables nft)
{
    private int _cursor;

    /// <summary>
    /// The current generation, and the structural drift if someone committed a transaction since
    /// <paramref name="state"/>'s generation and our tables are no longer as we left them. With
    /// no drift, <paramref name="state"/> now holds the tables as read.
    /// </summary>
    public async Task<(uint Generation, TableDrift? Drift)> CheckStructureAsync(ProgrammedState state, CancellationToken ct)
    {
        var generation = await nft.GenerationAsync(ct);
        if (generation != state.Generation || state.Generation == 0)
        {
            // Someone committed a transaction (or we lost track): is it ours to worry about?
            var tables = await nft.ReadTablesAsync(options.OurTables, ct);
            if (StructureChanged(tables, state) is { } changed) return (generation, new TableDrift(changed));
            state.Generation = generation;
            state.Tables = tables;
        }
        return (generation, null);
    }

    /// <summary>
    /// Compares some of our sets' elements with what we wrote, in rotation, up to
    /// <see cref="NftablesOptions.AuditElementsPerPass"/>; yields each set that differs. Sets are
    /// checked again only after a transaction of someone else (the generation moved). The caller
    /// repairs a drift before asking for the next one (and stops after a structural drift: a set gone).
    /// </summary>
    public async IAsyncEnumerable<TableDrift> CheckElementsAsync(ProgrammedState state, uint generation, [EnumeratorCancellation] CancellationToken ct)
    {
        var sets = state.Layout.Ruleset.Tables
            .SelectMany(t => t.OrderedSets.Where(s => !s.Dynamic && s.Name != LayoutBuilder.MarkerSet).Select(s => (Table: t, Set: s)))
            .ToList();
        if (sets.Count == 0) yield break;
        int budget = options.AuditElementsPerPass;
        int start = _cursor % sets.Count;
        for (int n = 0; n < sets.Count && budget > 0; n++)
        {
            var (table, set) = sets[(start + n) % sets.Count];
            var id = $"{table.Id} {set.Name}";
            if (state.AuditedAt.TryGetValue(id, out var at) && at == generation) continue;
            budget -= Math.Max(1, set.Content.Count);
            var json = await nft.ListSetJsonAsync(set.Kind, table.Family, table.Name, set.Name, ct);
            if (json is null)
            {
                yield return new TableDrift($"{set.Kind} {id} is gone");
                yield break;
            }
            var kernel = KeyedContent.Of(NftJson.Elements(json));
            var (delete, add) = SetContent.Diff(kernel, set.Content);
            if (delete.Count + add.Count > 0)
            {
                yield return new TableDrift($"{id} was changed: {delete.Count} wrong elements, {add.Count} missing")
                {
                    Set = (table, set), Kernel = kernel, Wrong = delete.Count, Missing = add.Count,
                };
                // The repair was a transaction of ours: the set is as written at the generation it left.
                generation = state.Generation;
            }
            state.AuditedAt[id] = generation;
            _cursor = (start + n + 1) % sets.Count;
        }
    }

    /// <summary>Null if our tables are as we left them (same signatures), else what differs.</summary>
    internal static string? StructureChanged(IReadOnlyList<KernelTable> tables, ProgrammedState state)
    {
        foreach (var table in state.Layout.Ruleset.Tables)
        {
            var kernel = tables.FirstOrDefault(t => t.Family == table.Family && t.Name == table.Name);
            if (kernel is null) return $"table {table.Id} is gone";
            if (!state.Signatures.TryGetValue(table.Id, out var signature)) return Mismatch(tables, state.Layout.Ruleset) ?? $"table {table.Id} was never checked";
            if (kernel.Signature() != signature) return Mismatch(tables, state.Layout.Ruleset) ?? $"table {table.Id} was rewritten (handles or rule bodies changed)";
        }
        foreach (var kernel in tables)
            if (state.Layout.Ruleset.Table(kernel.Family, kernel.Name) is null) return $"table {kernel.Family} {kernel.Name} exists but holds nothing of ours";
        return null;
    }

    /// <summary>
    /// Null if the kernel's tables have the chains, rules (by comment, in order) and sets that
    /// <paramref name="ruleset"/> declares, else the first difference. Rule bodies are not
    /// compared here (the kernel's bytes are not the text we wrote); signatures taken right after
    /// our own writes cover them.
    /// </summary>
    internal static string? Mismatch(IReadOnlyList<KernelTable> tables, NftRuleset ruleset)
    {
        foreach (var kernel in tables)
            if (ruleset.Table(kernel.Family, kernel.Name) is null) return $"table {kernel.Family} {kernel.Name} should not exist";
        foreach (var table in ruleset.Tables)
        {
            var kernel = tables.FirstOrDefault(t => t.Family == table.Family && t.Name == table.Name);
            if (kernel is null) return $"table {table.Id} is missing";
            // By name, once: a table holds thousands of chains and sets.
            var kernelChains = new Dictionary<string, KernelChain>(StringComparer.Ordinal);
            foreach (var c in kernel.Chains) kernelChains.TryAdd(c.Name, c);
            var kernelSets = new Dictionary<string, KernelSet>(StringComparer.Ordinal);
            foreach (var x in kernel.Sets) kernelSets.TryAdd(x.Name, x);
            foreach (var chain in table.Chains.Values)
            {
                var k = kernelChains.GetValueOrDefault(chain.Name);
                if (k is null) return $"chain {table.Id} {chain.Name} is missing";
                if ((chain.Base is null) != (k.Hook is null)) return $"chain {table.Id} {chain.Name} is {(k.Hook is null ? "not " : "")}a base chain";
                if (chain.Base is not null && chain.Base.Contains("device", StringComparison.Ordinal) && !chain.Base.Contains($"device \"{k.Device}\"", StringComparison.Ordinal))
                    return $"chain {table.Id} {chain.Name} hooks device {k.Device}";
                if (!SameComments(chain.Rules, k.Rules)) return $"chain {table.Id} {chain.Name} holds {k.Rules.Count} rules, not the {chain.Rules.Count} we wrote";
            }
            foreach (var k in kernel.Chains)
                if (!table.Chains.ContainsKey(k.Name)) return $"chain {table.Id} {k.Name} is not ours";
            foreach (var set in table.Sets.Values)
            {
                var k = kernelSets.GetValueOrDefault(set.Name);
                if (k is null) return $"set {table.Id} {set.Name} is missing";
                if (set.Name == LayoutBuilder.MarkerSet && !set.Declaration.Contains($"comment \"{k.Comment}\"", StringComparison.Ordinal))
                    return $"the generation marker says \"{k.Comment}\", not what we wrote";
                if (set.Dynamic && !ScriptRenderer.Matches(k, set)) return $"set {table.Id} {set.Name} is declared differently";
            }
            foreach (var k in kernel.Sets)
                if (!k.Anonymous && !table.Sets.ContainsKey(k.Name)) return $"set {table.Id} {k.Name} is not ours";
        }
        return null;
    }

    private static bool SameComments(IReadOnlyList<string> rules, IReadOnlyList<KernelRule> kernel)
    {
        if (rules.Count != kernel.Count) return false;
        for (int i = 0; i < rules.Count; i++)
            if (!string.Equals(CommentOf(rules[i]), kernel[i].Comment, StringComparison.Ordinal)) return false;
        return true;
    }

    internal static string? CommentOf(string rule)
    {
        const string marker = " comment \"";
        int at = rule.LastIndexOf(marker, StringComparison.Ordinal);
        return at < 0 ? null : rule[(at + marker.Length)..^1];
    }
}
