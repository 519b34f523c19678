using System.Diagnostics;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Linux;
using Merlin.Model;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Writes layouts into the kernel: the difference from what it holds as one transaction, or our
/// tables replaced whole when it does not hold what we believe; then reads back what the write
/// declared, so <see cref="ProgrammedState"/> says what the kernel holds afterwards.
/// </summary>
internal sealed partial class TableWriter(NftablesOptions options, INftables nft, ILogger logger, Phases phases)
{
    /// <summary>nft transactions run so far (tests: an apply of what is already there runs none).</summary>
    public long Transactions { get; private set; }

    /// <summary>Whether new DSR Maglev maps are made over netlink ahead of the transaction (<see cref="NftablesOptions.StageMaps"/>).</summary>
    private bool Staging => options.StageMaps && nft.CanStage;

    /// <summary>
    /// Programs <paramref name="layout"/> (built for <paramref name="services"/>): one transaction with
    /// what differs from <paramref name="state"/>'s layout. False if the kernel refused it for holding
    /// something other than we believe, so our tables were replaced whole instead.
    /// </summary>
    public async Task<bool> WriteAsync(ProgrammedState state, Layout.Layout layout, Dictionary<ServiceKey, ServiceState> services, CancellationToken ct)
    {
        NftScript script;
        using (phases.Measure("render")) script = ScriptRenderer.DiffScript(state.Layout.Ruleset, layout.Ruleset, Staging);
        if (script.IsEmpty)
        {
            state.Services = services;
            state.Layout = layout;
            return true;
        }
        var before = await nft.GenerationAsync(ct);
        int commits;
        try
        {
            commits = await RunAsync(script, ct);
        }
        catch (DataplaneException e) when (StateMismatch(e.Message))
        {
            // The kernel does not hold what we believe (changed behind our back since the last
            // check): replace whatever is there instead of editing it.
            LogDiffFailed(e.Message);
            await RewriteAsync(state, layout, ct, services);
            return false;
        }
        await AfterWriteAsync(state, layout, services, before, commits, ct);
        return true;
    }

    /// <summary>Replaces our tables, whatever they hold, with <paramref name="layout"/>; pinned flows survive.</summary>
    public async Task RewriteAsync(ProgrammedState state, Layout.Layout layout, CancellationToken ct, Dictionary<ServiceKey, ServiceState>? services = null)
    {
        var existing = await nft.ReadTablesAsync(options.OurTables, ct);
        var script = ScriptRenderer.RewriteScript(existing, layout.Ruleset, Staging);
        var before = await nft.GenerationAsync(ct);
        int commits = script.IsEmpty ? 0 : await RunAsync(script, ct);
        state.AuditedAt.Clear();
        await AfterWriteAsync(state, layout, services ?? state.Services, before, commits, ct, rewrite: true);
    }

    /// <summary>Writes one set's elements again where the kernel's (<see cref="TableDrift.Kernel"/>) differ from ours.</summary>
    public async Task RepairSetAsync(ProgrammedState state, NftTable table, NftSet set, SetContent kernel, CancellationToken ct)
    {
        var script = ScriptRenderer.DiffScript(
            new NftRuleset([table with { Sets = new Dictionary<string, NftSet> { [set.Name] = set with { Content = kernel } }, Chains = new Dictionary<string, NftChain>() }]),
            new NftRuleset([table with { Sets = new Dictionary<string, NftSet> { [set.Name] = set }, Chains = new Dictionary<string, NftChain>() }]));
        await RunAsync(script, ct);
        var after = await nft.GenerationAsync(ct);
        state.Remember(after, await nft.ReadTablesAsync(options.OurTables, ct));
    }

    /// <summary>What we know of the kernel after our write of <paramref name="commits"/> transactions, which started at generation <paramref name="before"/>.</summary>
    private async Task AfterWriteAsync(ProgrammedState state, Layout.Layout layout, Dictionary<ServiceKey, ServiceState> services, uint before, int commits, CancellationToken ct, bool rewrite = false)
    {
        bool alone = before == state.Generation;
        // Sets this transaction wrote in full: as long as nobody else committed in between, the
        // kernel holds exactly what we wrote, so they need no audit.
        var written = layout.Ruleset.Tables
            .SelectMany(t => t.Sets.Values.Where(s => !s.Dynamic && (rewrite || state.Layout.Ruleset.Table(t.Family, t.Name)?.Sets.GetValueOrDefault(s.Name) is not { } old
                || old.Kind != s.Kind || old.Declaration != s.Declaration)).Select(s => $"{t.Id} {s.Name}"))
            .ToList();
        var previous = state.Layout.Ruleset;
        var known = state.Tables;
        state.Services = services;
        state.Layout = layout;
        uint after;
        using (phases.Measure("read back: generation")) after = await nft.GenerationAsync(ct);
        // Only our transaction since the tables were last read: read back just what it declared
        // anew (new handles), not the thousands of chains and sets it did not touch.
        IReadOnlyList<KernelTable> tables;
        bool onlyOurs = alone && after == before + (uint)commits;
        if (!rewrite && onlyOurs && known is not null)
        {
            using var _ = phases.Measure("read back: what changed");
            tables = await ReadChangedAsync(known, previous, layout.Ruleset, ct);
        }
        else
        {
            using var _ = phases.Measure("read back: whole tables");
            tables = await nft.ReadTablesAsync(options.OurTables, ct);
        }
        string? mismatched;
        using (phases.Measure("read back: compare")) mismatched = TableAuditor.Mismatch(tables, layout.Ruleset);
        if (mismatched is { } mismatch)
        {
            // Someone changed our tables between our write and this read, or we wrote something
            // the kernel keeps differently: the next resync repairs it.
            LogAfterWriteMismatch(mismatch);
            state.Unknown();
            return;
        }
        state.Tables = tables;
        using (phases.Measure("read back: signatures")) state.Signatures = ProgrammedState.SignaturesOf(tables);
        if (onlyOurs)
        {
            // Nobody else committed in between: the sets we had checked are still as checked.
            var audited = state.AuditedAt;
            foreach (var key in audited.Keys.ToList()) if (audited[key] == before) audited[key] = after;
            foreach (var id in written) audited[id] = after;
        }
        state.Generation = after;
    }

    /// <summary>
    /// Our tables after a transaction of ours from <paramref name="from"/> to <paramref name="to"/>,
    /// when <paramref name="known"/> is what they were before it: the chains and sets the
    /// transaction created, rewrote or deleted are read again by name (they have new handles), the
    /// rest is as it was. A table created or deleted, or a change to most of a table, is read whole.
    /// </summary>
    private async Task<IReadOnlyList<KernelTable>> ReadChangedAsync(IReadOnlyList<KernelTable> known, NftRuleset from, NftRuleset to, CancellationToken ct)
    {
        var result = new List<KernelTable>();
        foreach (var (family, name) in options.OurTables)
        {
            var had = known.FirstOrDefault(t => t.Family == family && t.Name == name);
            var old = from.Table(family, name);
            var now = to.Table(family, name);
            if (now is null && old is null && had is null) continue;
            if (now is null || old is null || had is null) return await nft.ReadTablesAsync(options.OurTables, ct);
            var (chains, sets) = Touched(old, now);
            if (chains.Count + sets.Count > 64) return await nft.ReadTablesAsync(options.OurTables, ct);
            if (chains.Count + sets.Count == 0) { result.Add(had); continue; }
            var parts = await nft.ReadTablePartsAsync(family, name, chains, sets, ct);
            if (parts is null) return await nft.ReadTablesAsync(options.OurTables, ct);
            result.Add(had with
            {
                Handle = parts.Handle,
                Flags = parts.Flags,
                Chains = had.Chains.Where(c => !chains.Contains(c.Name)).Concat(parts.Chains).ToList(),
                Sets = had.Sets.Where(s => !sets.Contains(s.Name)).Concat(parts.Sets).ToList(),
            });
        }
        return result;
    }

    /// <summary>
    /// The chains and sets a diff from <paramref name="from"/> to <paramref name="to"/> declares,
    /// deletes or rewrites (<see cref="ScriptRenderer"/>'s rules, <see cref="ScriptRenderer.Redeclared"/>: a chain is rewritten when its
    /// rules or hook change or a rule names a redeclared set; element changes touch no handle).
    /// </summary>
    internal static (HashSet<string> Chains, HashSet<string> Sets) Touched(NftTable from, NftTable to)
    {
        var sets = ScriptRenderer.Redeclared(from, to);
        foreach (var set in to.Sets.Values)
            if (!from.Sets.ContainsKey(set.Name)) sets.Add(set.Name);
        var chains = new HashSet<string>(StringComparer.Ordinal);
        foreach (var chain in from.Chains.Values)
            if (!to.Chains.TryGetValue(chain.Name, out var want) || !want.SameAs(chain) || sets.Any(chain.References)) chains.Add(chain.Name);
        foreach (var chain in to.Chains.Values)
            if (!from.Chains.ContainsKey(chain.Name)) chains.Add(chain.Name);
        return (chains, sets);
    }

    /// <summary>Errors that mean the kernel holds something other than we believe, not that the change itself is wrong.</summary>
    private static bool StateMismatch(string error) =>
        error.Contains("No such file or directory", StringComparison.Ordinal) ||
        error.Contains("File exists", StringComparison.Ordinal) ||
        error.Contains("Device or resource busy", StringComparison.Ordinal);

    /// <summary>
    /// Runs a script: its staged sets first (over netlink, unseen by the packet path until the
    /// script's rules name them), then the rest as one nft transaction. If that transaction fails, the
    /// staged sets are deleted again. Returns how many transactions were committed.
    /// </summary>
    private async Task<int> RunAsync(NftScript script, CancellationToken ct)
    {
        var started = Stopwatch.StartNew();
        var staging = StageResult.None;
        if (script.Staged.Count > 0)
        {
            try
            {
                using var _ = phases.Measure("stage maps (netlink)");
                staging = await nft.StageAsync(script.Staged, ct);
            }
            catch (NetlinkException e)
            {
                throw new DataplaneException($"the kernel refused the new maps: {e.Message}", e);
            }
            catch (FormatException e)
            {
                // A neighbour address that is no MAC (a value nft would refuse too): this change's fault, not the machine's.
                throw new DataplaneException($"the new maps cannot be written: {e.Message}", e);
            }
        }
        int commits = staging.Commits;
        try
        {
            if (script.HasNftCommands)
            {
                using var _ = phases.Measure("nft (render, then libnftables)");
                await nft.RunAsync(script, ct);
                commits++;
            }
        }
        catch (Exception e) when (e is NftException || script.Staged.Count > 0)
        {
            if (script.Staged.Count > 0)
            {
                try { await nft.UnstageAsync(staging, script.Staged, CancellationToken.None); }
                catch (Exception u) when (u is not OperationCanceledException) { LogUnstageFailed(u.Message); }   // the next resync removes them
            }
            if (e is NftException refused) throw new DataplaneException($"nft refused the transaction: {refused.Message}", e);
            throw;
        }
        Transactions++;
        if (logger.IsEnabled(LogLevel.Debug)) LogTransaction(script.Lines, started.Elapsed.TotalMilliseconds);
        return commits;
    }

    [LoggerMessage(EventId = 406, Level = LogLevel.Warning, Message = "nftables: an incremental change was refused ({Reason}); rewriting our tables")]
    private partial void LogDiffFailed(string reason);

    [LoggerMessage(EventId = 407, Level = LogLevel.Warning, Message = "nftables: after our write the kernel holds something else ({Reason}); the next resync repairs it")]
    private partial void LogAfterWriteMismatch(string reason);

    [LoggerMessage(EventId = 408, Level = LogLevel.Debug, Message = "nftables: transaction of {Lines} commands in {Milliseconds:0.0} ms")]
    private partial void LogTransaction(int lines, double milliseconds);

    [LoggerMessage(EventId = 415, Level = LogLevel.Warning, Message = "nftables: the maps made for a refused transaction could not be deleted ({Reason}); the next resync removes them")]
    private partial void LogUnstageFailed(string reason);
}
