using System.Buffers;
using System.Globalization;
using System.Runtime.CompilerServices;
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
/// <para>
/// A script is an <see cref="NftScript"/>: its commands, with the elements of whole sets kept as
/// references to the sets' contents and written as UTF-8 only when the script is written (straight
/// into nft's standard input, while nft parses what came before). A full layout of a million
/// elements is then never a 25 MiB string.
/// </para>
/// </summary>
internal static class ScriptRenderer
{
    /// <summary>Elements per <c>add element</c> command: keeps lines readable; all are in the one transaction anyway.</summary>
    internal const int ElementsPerCommand = 1024;

    /// <summary>The script that creates <paramref name="ruleset"/> from nothing.</summary>
    public static string Full(NftRuleset ruleset) => Diff(NftRuleset.Empty, ruleset);

    /// <summary>The script that turns <paramref name="from"/> (what the kernel holds) into <paramref name="to"/>; empty if they are the same.</summary>
    public static string Diff(NftRuleset from, NftRuleset to) => DiffScript(from, to).ToString();

    /// <summary>
    /// As <see cref="Diff"/>, not yet written out. With <paramref name="stage"/>, the DSR Maglev maps
    /// the diff creates (new to the kernel, not redeclared) are left to <see cref="Kernel.SetStaging"/>:
    /// listed in <see cref="NftScript.Staged"/>, written into the script only on request (for a log or
    /// a replay), and created and filled over netlink before nft runs the rest.
    /// </summary>
    public static NftScript DiffScript(NftRuleset from, NftRuleset to, bool stage = false)
    {
        var script = new NftScript();
        foreach (var table in from.Tables)
            if (to.Table(table.Family, table.Name) is null) script.Removals.AppendLine($"delete table {table.Id}");
        foreach (var table in to.Tables)
        {
            if (from.Table(table.Family, table.Name) is { } old) DiffTable(script, old, table, stage);
            else CreateTable(script, table, stage);
        }
        return script;
    }

    /// <summary>
    /// The script that replaces whatever the kernel holds in our tables (<paramref name="existing"/>,
    /// as read over netlink) with <paramref name="to"/>: the repair after a change made behind our
    /// back. Every chain is flushed and deleted, every set deleted, except the dynamic flow maps when
    /// they are still declared as we want: pinned flows survive a repair.
    /// </summary>
    public static string Rewrite(IReadOnlyList<KernelTable> existing, NftRuleset to) => RewriteScript(existing, to).ToString();

    /// <summary>As <see cref="Rewrite"/>, not yet written out; <paramref name="stage"/> as for <see cref="DiffScript"/> (only sets the kernel does not hold).</summary>
    public static NftScript RewriteScript(IReadOnlyList<KernelTable> existing, NftRuleset to, bool stage = false)
    {
        var script = new NftScript();
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
                if (!keep.Contains(set.Name)) AddSet(script, table, set, stage && kernel.Set(set.Name) is null);
        }
        foreach (var table in to.Tables)
            if (!existing.Any(k => k.Family == table.Family && k.Name == table.Name)) CreateTable(script, table, stage);
        return script;
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

    private static void CreateTable(NftScript script, NftTable table, bool stage)
    {
        script.Tables.AppendLine($"add table {table.Id}");
        foreach (var chain in table.OrderedChains) AddChain(script, table, chain);
        foreach (var set in table.OrderedSets) AddSet(script, table, set, stage);
    }

    /// <summary>
    /// The sets of <paramref name="from"/> a diff to <paramref name="to"/> deletes (and adds again if
    /// they stay): those that go away or are declared differently, and NAT maps a new or changed rule
    /// names. nft 1.0.6 refuses a rule <c>dnat … map @nN</c> when the map exists in the kernel already
    /// (its <c>typeof … th dport</c> read back from the kernel: "conflicting protocols specified: tcp
    /// vs. th"), and accepts it when the map is declared in the same transaction; so such a map is
    /// declared again with its elements (conntrack keeps the connections it already translated).
    /// </summary>
    internal static HashSet<string> Redeclared(NftTable from, NftTable to)
    {
        var redeclared = new HashSet<string>(StringComparer.Ordinal);
        List<string>? transportMaps = null;
        foreach (var set in from.OrderedSets)
        {
            if (!to.Sets.TryGetValue(set.Name, out var want) || want.Kind != set.Kind || want.Declaration != set.Declaration) redeclared.Add(set.Name);
            else if (set.Kind == "map" && MapsToTransport(set.Declaration)) (transportMaps ??= []).Add(set.Name);
        }
        if (transportMaps is null) return redeclared;
        foreach (var chain in to.Chains.Values)
        {
            if (from.Chains.TryGetValue(chain.Name, out var had) && had.Base == chain.Base && had.SameAs(chain)) continue;
            foreach (var map in transportMaps)
                if (chain.References(map)) redeclared.Add(map);
        }
        return redeclared;
    }

    /// <summary>
    /// Whether a map's values hold a transport port (a NAT map's <c>… : ip daddr . th dport</c>). The flow maps hold one
    /// in their keys only, and nft takes new rules naming them as they are: declaring one again would drop every pin.
    /// </summary>
    private static bool MapsToTransport(string declaration)
    {
        int colon = declaration.IndexOf(" : ", StringComparison.Ordinal);
        return colon >= 0 && declaration.AsSpan(colon).IndexOf(" th dport", StringComparison.Ordinal) >= 0;
    }

    /// <summary>
    /// The diff of a table patched from <paramref name="from"/> (<see cref="NftTable.WithSetsReplaced"/>): only its
    /// replaced sets differ, so only they are looked at, with the same text as <see cref="DiffTable"/> would write —
    /// element changes for a set declared as before; for one declared anew, which must be one no rule names (the state
    /// records, the marker), a delete and an add. False if the patch is not from <paramref name="from"/> or a
    /// replaced set is declared anew and could be named by a rule: then the whole diff runs.
    /// </summary>
    private static bool DiffPatched(NftScript script, NftTable from, NftTable to)
    {
        if (to.Patch is not { } patch || !ReferenceEquals(patch.From, from) || !ReferenceEquals(from.Chains, to.Chains)) return false;
        foreach (var name in patch.Changed)
        {
            var (had, want) = (from.Sets.GetValueOrDefault(name), to.Sets.GetValueOrDefault(name));
            if (had is null || want is null || had.Dynamic || want.Dynamic) return false;
            if ((had.Kind != want.Kind || had.Declaration != want.Declaration) && name is not (LayoutBuilder.StateSet or LayoutBuilder.MarkerSet)) return false;
        }
        foreach (var name in patch.Changed)
        {
            var (had, want) = (from.Sets[name], to.Sets[name]);
            if (had.Kind != want.Kind || had.Declaration != want.Declaration)
            {
                script.SetDeletions.AppendLine($"delete {had.Kind} {to.Id} {name}");
                AddSet(script, to, want, stage: false);
                continue;
            }
            var (delete, add) = SetContent.Diff(had.Content, want.Content);
            AppendElements(script.ElementDeletions, "delete element", to, name, delete);
            AppendElements(script.ElementAdditions, "add element", to, name, add);
        }
        return true;
    }

    private static void DiffTable(NftScript script, NftTable from, NftTable to, bool stage)
    {
        if (DiffPatched(script, from, to)) return;
        // Sets that go away or are declared differently, and NAT maps a new rule names (see
        // Redeclared); a redeclared set is deleted and added again.
        var redeclared = Redeclared(from, to);

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
            if (!from.Sets.ContainsKey(set.Name) || redeclared.Contains(set.Name))
            {
                // A redeclared set is deleted in this very transaction: it cannot be made ahead of it under its name.
                AddSet(script, to, set, stage && !redeclared.Contains(set.Name));
                continue;
            }
            if (set.Dynamic) continue;
            var (_, add) = SetContent.Diff(from.Sets[set.Name].Content, set.Content);
            AppendElements(script.ElementAdditions, "add element", to, set.Name, add);
        }
    }

    private static void AddChain(NftScript script, NftTable table, NftChain chain)
    {
        script.Chains.AppendLine(chain.Base is null ? $"add chain {table.Id} {chain.Name}" : $"add chain {table.Id} {chain.Name} {{ {chain.Base} }}");
        AddRules(script, table, chain);
    }

    private static void AddRules(NftScript script, NftTable table, NftChain chain)
    {
        foreach (var rule in chain.Rules) script.Rules.AppendLine($"add rule {table.Id} {chain.Name} {rule}");
    }

    /// <summary>Declares and fills a set; with <paramref name="stage"/> and a set <see cref="StagedSet.Stageable"/>, as a staged set.</summary>
    private static void AddSet(NftScript script, NftTable table, NftSet set, bool stage)
    {
        var declaration = $"add {set.Kind} {table.Id} {set.Name} {{ {set.Declaration} }}";
        var prefix = $"add element {table.Id} {set.Name} {{ ";
        if (stage && StagedSet.Stageable(set))
        {
            script.Staged.Add(new StagedSet(table.Family, table.Name, set));
            script.Sets.AppendStaged(declaration, prefix, set.Content);
            return;
        }
        script.Sets.AppendLine(declaration);
        if (set.Dynamic || set.Content.Count == 0) return;
        script.Sets.AppendContent(prefix, set.Content);
    }

    private static void AppendElements(NftScript.Section to, string command, NftTable table, string set, List<string> elements)
    {
        for (int at = 0; at < elements.Count; at += ElementsPerCommand)
        {
            var line = new StringBuilder();
            line.Append(command).Append(' ').Append(table.Id).Append(' ').Append(set).Append(" { ");
            line.AppendJoin(", ", elements.Skip(at).Take(ElementsPerCommand));
            line.Append(" }");
            to.AppendLine(line.ToString());
        }
    }
}

/// <summary>
/// One transaction: its sections in the order the kernel must see them, each a list of command
/// lines and of whole set contents (written <see cref="ScriptRenderer.ElementsPerCommand"/> elements
/// per command when the script is written). Immutable once rendered, so it can be written more than
/// once: into nft, and into a string for a log or a test.
/// </summary>
internal sealed class NftScript
{
    public readonly Section Removals = new();
    public readonly Section ElementDeletions = new();
    public readonly Section Flushes = new();
    public readonly Section SetDeletions = new();
    public readonly Section ChainDeletions = new();
    public readonly Section Tables = new();
    public readonly Section Chains = new();
    public readonly Section Sets = new();
    public readonly Section Rules = new();
    public readonly Section ElementAdditions = new();

    /// <summary>Sets made over netlink before nft runs the script (see <see cref="ScriptRenderer.DiffScript"/>); their commands are in the script, written only by <c>WriteTo(stream, withStaged: true)</c>.</summary>
    public readonly List<StagedSet> Staged = [];

    private IEnumerable<Section> Sections => [Removals, ElementDeletions, Flushes, SetDeletions, ChainDeletions, Tables, Chains, Sets, Rules, ElementAdditions];

    /// <summary>Whether the script holds no command at all.</summary>
    public bool IsEmpty => Sections.All(s => s.Parts.Count == 0);

    /// <summary>Whether nft has anything to run once the staged sets are made.</summary>
    public bool HasNftCommands => Sections.Any(s => s.Parts.Any(p => p is not StagedPart));

    /// <summary>How many command lines the script has.</summary>
    public int Lines => Sections.Sum(s => s.Parts.Sum(p => p switch
    {
        SetContent c => (c.Count + ScriptRenderer.ElementsPerCommand - 1) / ScriptRenderer.ElementsPerCommand,
        StagedPart staged => 1 + (staged.Content.Count + ScriptRenderer.ElementsPerCommand - 1) / ScriptRenderer.ElementsPerCommand,
        Prefix => 0,
        _ => 1,
    }));

    /// <summary>A section: command lines (each without its newline) and set contents, each after the command prefix before it.</summary>
    internal sealed class Section
    {
        internal readonly List<object> Parts = [];

        public void AppendLine(string line) => Parts.Add(line);

        /// <summary>Every element of <paramref name="content"/>, in commands that start with <paramref name="prefix"/> (e.g. "add element netdev merlin d1 { ").</summary>
        public void AppendContent(string prefix, SetContent content)
        {
            Parts.Add(new Prefix(prefix));
            Parts.Add(content);
        }

        /// <summary>A staged set's declaration and elements: what nft would have been given for it.</summary>
        public void AppendStaged(string declaration, string prefix, SetContent content) => Parts.Add(new StagedPart(declaration, prefix, content));
    }

    private sealed record Prefix(string Text);

    private sealed record StagedPart(string Declaration, string Prefix, SetContent Content);

    /// <summary>Writes the script as UTF-8 to <paramref name="stream"/> (nft's standard input), 64 KiB at a time.</summary>
    public void WriteTo(Stream stream) => WriteTo(stream, withStaged: false);

    /// <summary>
    /// As <see cref="WriteTo(Stream)"/>; <paramref name="withStaged"/> writes the staged sets too, as
    /// nft commands in their place: the whole change as one script that <c>nft -f</c> could replay.
    /// </summary>
    public void WriteTo(Stream stream, bool withStaged)
    {
        var writer = new Utf8Writer(stream);
        try
        {
            foreach (var section in Sections)
            {
                string? prefix = null;
                foreach (var part in section.Parts)
                {
                    switch (part)
                    {
                        case string line: writer.Append(line); writer.Append((byte)'\n'); break;
                        case Prefix p: prefix = p.Text; break;
                        case SlotContent slots: WriteSlots(writer, prefix!, slots); break;
                        case SetContent content: WriteElements(writer, prefix!, content); break;
                        case StagedPart staged when withStaged:
                            writer.Append(staged.Declaration);
                            writer.Append((byte)'\n');
                            if (staged.Content is SlotContent s) WriteSlots(writer, staged.Prefix, s);
                            else WriteElements(writer, staged.Prefix, staged.Content);
                            break;
                    }
                }
            }
            writer.Flush();
        }
        finally
        {
            writer.Dispose();
        }
    }

    /// <summary>What nft runs (without the staged sets).</summary>
    public override string ToString() => ToString(withStaged: false);

    public string ToString(bool withStaged)
    {
        using var memory = new MemoryStream();
        WriteTo(memory, withStaged);
        return Encoding.UTF8.GetString(memory.GetBuffer(), 0, (int)memory.Length);
    }

    private static void WriteElements(Utf8Writer writer, string prefix, SetContent content)
    {
        int n = 0;
        foreach (var (_, element) in content.Elements())
        {
            if (n == 0) writer.Append(prefix);
            else writer.Append(", "u8);
            writer.Append(element);
            if (++n == ScriptRenderer.ElementsPerCommand) { writer.Append(" }\n"u8); n = 0; }
        }
        if (n > 0) writer.Append(" }\n"u8);
    }

    /// <summary>A Maglev map's slots, "slot : value", without a string per element.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WriteSlots(Utf8Writer writer, string prefix, SlotContent slots)
    {
        int n = 0;
        string? last = null;
        byte[] bytes = [];
        for (int i = 0; i < slots.Length; i++)
        {
            var value = slots.ValueAt(i);
            if (value is null) continue;
            if (!ReferenceEquals(value, last)) { bytes = Encoding.UTF8.GetBytes(value); last = value; }
            if (n == 0) writer.Append(prefix);
            else writer.Append(", "u8);
            writer.Append(i);
            writer.Append(" : "u8);
            writer.Append(bytes);
            if (++n == ScriptRenderer.ElementsPerCommand) { writer.Append(" }\n"u8); n = 0; }
        }
        if (n > 0) writer.Append(" }\n"u8);
    }

    /// <summary>A pooled 64 KiB buffer in front of a stream.</summary>
    private sealed class Utf8Writer(Stream stream) : BufferedUtf8Writer
    {
        protected override void Write(ReadOnlySpan<byte> bytes) => stream.Write(bytes);
    }
}
