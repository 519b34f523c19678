using System.Text;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Linux;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// Everything the dataplane asks of the kernel's nftables, so the rest of it is pure and testable.
/// Writes are nft scripts (libnftables in the process, or the nft CLI); reads are netlink (structure,
/// generation) or a JSON listing of one set.
/// </summary>
internal interface INftables
{
    /// <summary>Runs a script as one transaction; throws <see cref="NftException"/> with nft's message.</summary>
    Task RunAsync(string script, CancellationToken ct);

    /// <summary>As <see cref="RunAsync(string, CancellationToken)"/>; an implementation may write the script into nft as it renders it.</summary>
    Task RunAsync(NftScript script, CancellationToken ct) => RunAsync(script.ToString(), ct);

    /// <summary>Whether <see cref="StageAsync"/> reaches the kernel (a double for tests of logic says no, and is given whole scripts).</summary>
    bool CanStage => false;

    /// <summary>Creates and fills sets over netlink ahead of the transaction that uses them (<see cref="SetStaging"/>); says how many transactions that committed and which tables it made.</summary>
    Task<StageResult> StageAsync(IReadOnlyList<StagedSet> sets, CancellationToken ct) => throw new NotSupportedException("this nftables writer cannot stage sets");

    /// <summary>Deletes staged sets (and the tables staging made) again: the transaction that was to use them failed.</summary>
    Task UnstageAsync(StageResult staging, IReadOnlyList<StagedSet> sets, CancellationToken ct) => Task.CompletedTask;

    /// <summary><c>nft -j list {kind} {family} {table} {name}</c> — one set's elements only; null if it does not exist.</summary>
    Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct);

    /// <summary>The ruleset generation id, bumped by every transaction of anyone.</summary>
    Task<uint> GenerationAsync(CancellationToken ct);

    /// <summary>Every element of one set as key and value bytes (the pins of a flow map); empty if the set does not exist.</summary>
    Task<IReadOnlyList<SetElement>> ReadElementsAsync(string family, string table, string set, CancellationToken ct);

    /// <summary>
    /// Deletes elements by key (<see cref="SetElements.Delete"/>): the transactions committed, or null if a key was gone
    /// already; with <paramref name="evenIfGone"/> gone keys are passed over, or <see cref="NotSupportedException"/> on a kernel older than 6.3.
    /// </summary>
    Task<int?> DeleteElementsAsync(string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone, CancellationToken ct);

    /// <summary>Our tables' structure (no elements); a missing table is left out.</summary>
    Task<IReadOnlyList<KernelTable>> ReadTablesAsync(IReadOnlyList<(string Family, string Name)> tables, CancellationToken ct);

    /// <summary>One table with only the named chains (with their rules) and sets; null if the table does not exist.</summary>
    async Task<KernelTable?> ReadTablePartsAsync(string family, string name, IReadOnlyCollection<string> chains, IReadOnlyCollection<string> sets, CancellationToken ct)
    {
        var table = (await ReadTablesAsync([(family, name)], ct)).FirstOrDefault();
        return table is null ? null : table with
        {
            Chains = table.Chains.Where(c => chains.Contains(c.Name)).ToList(),
            Sets = table.Sets.Where(s => sets.Contains(s.Name)).ToList(),
        };
    }
}

internal sealed class NftException(string message) : Exception(message);

/// <summary>
/// What both writers share: reads over netlink, nft's error text cut for a log line, and the choice
/// of writer. Writes go through libnftables inside the process (<see cref="NftLib"/>) and through the
/// nft CLI (<see cref="NftCli"/>) only when the library cannot be loaded. Both run the same parser and
/// transaction code; the CLI was kept at first for a script an operator can replay (it still is:
/// errors quote the line), but its process cost every change more than the rest of the change:
/// measured on 1,000 services sharing one server set, a weight change's nft step took 19–40 ms
/// through the CLI (process start, <c>ip netns exec</c>, and the exit's close of its netlink socket,
/// which waits for the kernel to release the transaction — 6–15 ms) and takes 1–4 ms in the process
/// with the context kept between runs; dataplane read + plan + apply went from medians 46–56 ms to
/// 23–44 ms (docs/performance.md). New DSR maps are made by our own codec before either writer runs
/// (<see cref="StageAsync"/>, <see cref="SetStaging"/>): nft's parser was most of a first pass of
/// 1,000 distinct maps, and libnftables' parse of their 25.5 MiB of elements made the process's RSS
/// peak at ~1 GB.
/// Why netlink for reads: nft fetches every element of every set of a table before it lists even one
/// chain (18–29 s with 1.3 M elements, measured), netlink answers in milliseconds.
/// </summary>
internal abstract partial class NftKernel : INftables, IDisposable
{
    /// <summary>
    /// How long an idle netlink socket (ours for reads, libnftables' context) stays open. Closing one
    /// right after a transaction waits for the kernel to release it (an RCU grace period, 6–15 ms
    /// measured here); a second later it costs nothing.
    /// </summary>
    public static readonly TimeSpan Linger = TimeSpan.FromSeconds(1);

    private readonly Kept<NetlinkClient> _socket;

    protected NftKernel(NftablesOptions options)
    {
        Options = options;
        _socket = new Kept<NetlinkClient>(() => NfNetlink.Open(options.NetworkNamespace), s => s.Dispose(), Linger, new Lock(),
            () => Merlin.Linux.NetworkNamespace.Identity(options.NetworkNamespace));
    }

    protected NftablesOptions Options { get; }

    /// <summary>Which writer this is, for the log ("libnftables.so.1 (in-process)", "the nft CLI (nft)").</summary>
    public abstract string Description { get; }

    public abstract Task RunAsync(string script, CancellationToken ct);

    public abstract Task RunAsync(NftScript script, CancellationToken ct);

    public abstract Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct);

    /// <summary>
    /// libnftables (<see cref="NftablesOptions.LibNftables"/>) if it loads, else the nft CLI; the log
    /// says which, and why not the library.
    /// </summary>
    public static NftKernel Open(NftablesOptions options, ICommandRunner runner, ILogger logger)
    {
        NftKernel writer;
        string? why = "no library configured";
        if (options.LibNftables is { } library && LibNftablesApi.TryLoad(library, out why) is { } api) writer = new NftLib(options, api);
        else writer = new NftCli(options, runner);
        if (writer is NftLib) LogWriter(logger, writer.Description);
        else LogFallback(logger, why ?? "unknown", writer.Description);
        return writer;
    }

    [LoggerMessage(EventId = 413, Level = LogLevel.Information, Message = "nftables: transactions through {Writer}")]
    private static partial void LogWriter(ILogger logger, string writer);

    [LoggerMessage(EventId = 414, Level = LogLevel.Warning, Message = "nftables: libnftables is not used ({Reason}); transactions through {Writer}")]
    private static partial void LogFallback(ILogger logger, string reason, string writer);

    public Task<uint> GenerationAsync(CancellationToken ct) => Task.Run(() => _socket.Use(NfTablesReader.Generation), ct);

    /// <summary>On a socket of its own: a dump of a full flow map takes seconds, and the kept socket serves the passes meanwhile.</summary>
    public Task<IReadOnlyList<SetElement>> ReadElementsAsync(string family, string table, string set, CancellationToken ct) => Task.Run(() =>
    {
        using var socket = NfNetlink.Open(Options.NetworkNamespace);
        return (IReadOnlyList<SetElement>)SetElements.Read(socket, family, table, set);
    }, ct);

    public Task<int?> DeleteElementsAsync(string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone, CancellationToken ct) =>
        Task.Run(() => _socket.Use(socket => SetElements.Delete(socket, family, table, set, keys, evenIfGone)), ct);

    /// <summary>The codec writes numbers in host order as little-endian (every Linux this runs on).</summary>
    public bool CanStage => BitConverter.IsLittleEndian;

    public Task<StageResult> StageAsync(IReadOnlyList<StagedSet> sets, CancellationToken ct) => Task.Run(() => _socket.Use(socket => SetStaging.Stage(socket, sets)), ct);

    public Task UnstageAsync(StageResult staging, IReadOnlyList<StagedSet> sets, CancellationToken ct) => Task.Run(() => _socket.Use(socket =>
    {
        SetStaging.Unstage(socket, staging, sets);
        return 0;
    }), ct);

    public Task<IReadOnlyList<KernelTable>> ReadTablesAsync(IReadOnlyList<(string Family, string Name)> tables, CancellationToken ct) => Task.Run(() => _socket.Use(socket =>
    {
        var result = new List<KernelTable>();
        foreach (var (family, name) in tables)
            if (NfTablesReader.ReadTable(socket, family, name) is { } table) result.Add(table);
        return (IReadOnlyList<KernelTable>)result;
    }), ct);

    public Task<KernelTable?> ReadTablePartsAsync(string family, string name, IReadOnlyCollection<string> chains, IReadOnlyCollection<string> sets, CancellationToken ct) =>
        Task.Run(() => _socket.Use(socket => NfTablesReader.ReadTable(socket, family, name, chains, sets)), ct);

    /// <summary>Closes what is kept open between calls now (it closes itself after <see cref="Linger"/> anyway).</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing) _socket.Dispose();
    }

    /// <summary>nft's error output, cut to what a log line can hold (an error quotes the whole offending line).</summary>
    internal static string Summarize(string error)
    {
        var lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(l => !l.All(c => c is '^' or '~' or ' '))
            .Take(6)
            .Select(l => l.Length > 300 ? l[..300] + "…" : l);
        var text = string.Join(" | ", lines);
        return text.Length == 0 ? "nft failed without a message" : text;
    }
}

/// <summary>
/// The nft CLI (<see cref="NftablesOptions.NftPath"/>, one process per transaction, inside the
/// namespace through <c>ip netns exec</c>): the writer when libnftables cannot be loaded.
/// </summary>
internal sealed class NftCli(NftablesOptions options, ICommandRunner runner) : NftKernel(options)
{
    public override string Description => $"the nft CLI ({Options.NftPath})";

    public override async Task RunAsync(string script, CancellationToken ct)
    {
        var result = await runner.RunAsync(Options.NftPath, ["-f", "-"], script, ct);
        if (result.ExitCode != 0) throw new NftException(Summarize(result.Error));
    }

    /// <summary>
    /// Renders the script straight into nft's standard input, so no copy of a large script is ever
    /// held as a string. If rendering fails, a character nft rejects goes in before the end of file,
    /// so nft refuses the cut script instead of committing it up to the cut.
    /// </summary>
    public override async Task RunAsync(NftScript script, CancellationToken ct)
    {
        var result = await runner.StreamAsync(Options.NftPath, ["-f", "-"], stdin =>
        {
            try { script.WriteTo(stdin); }
            catch (Exception e) when (e is not IOException)
            {
                try { stdin.Write("\n\u0001 merlin: the script was not rendered to its end\n"u8); }
                catch (IOException) { }
                throw;
            }
        }, ct);
        if (result.ExitCode != 0) throw new NftException(Summarize(result.Error));
    }

    public override async Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct)
    {
        var result = await runner.RunAsync(Options.NftPath, ["-j", "list", kind, family, table, name], null, ct);
        if (result.ExitCode == 0) return result.Output;
        if (result.Error.Contains("No such file or directory", StringComparison.Ordinal)) return null;
        throw new NftException(Summarize(result.Error));
    }
}

internal sealed record CommandResult(int ExitCode, string Output, string Error);

/// <summary>Runs a program (inside the configured network namespace, if any).</summary>
internal interface ICommandRunner
{
    Task<CommandResult> RunAsync(string file, IReadOnlyList<string> arguments, string? input, CancellationToken ct);

    /// <summary>As the other overload, with standard input written by <paramref name="writeInput"/> (on a pool thread, while the program runs).</summary>
    Task<CommandResult> StreamAsync(string file, IReadOnlyList<string> arguments, Action<Stream> writeInput, CancellationToken ct) =>
        RunAsync(file, arguments, Render(writeInput), ct);

    private static string Render(Action<Stream> writeInput)
    {
        using var memory = new MemoryStream();
        writeInput(memory);
        return Encoding.UTF8.GetString(memory.GetBuffer(), 0, (int)memory.Length);
    }
}

/// <summary>Runs nft through <see cref="ProgramRunner"/> (inside the namespace, if any, with <c>ip netns exec</c>).</summary>
internal sealed class ProcessRunner(string? networkNamespace, string ipPath) : ICommandRunner
{
    public Task<CommandResult> RunAsync(string file, IReadOnlyList<string> arguments, string? input, CancellationToken ct) =>
        Result(ProgramRunner.RunAsync(Command(file, arguments), input, ct));

    public Task<CommandResult> StreamAsync(string file, IReadOnlyList<string> arguments, Action<Stream> writeInput, CancellationToken ct) =>
        Result(ProgramRunner.RunAsync(Command(file, arguments), writeInput, ct));

    private ProgramCommand Command(string file, IReadOnlyList<string> arguments) =>
        new(file, arguments) { NetworkNamespace = networkNamespace, IpPath = ipPath };

    private static async Task<CommandResult> Result(Task<ProgramResult> run)
    {
        var result = await run;
        return new CommandResult(result.ExitCode, result.Output, result.Error);
    }
}
