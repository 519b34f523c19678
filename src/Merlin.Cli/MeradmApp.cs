using System.CommandLine;
using System.CommandLine.Invocation;
using Merlin.Cli.Commands;
using Merlin.Client;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Cli;

/// <summary>Makes the client for one call; tests pass a fake, the default dials <see cref="ConnectionOptions.Address"/>.</summary>
public delegate MerlinClient MerlinClientFactory(ConnectionOptions options);

/// <summary>
/// meradm, the ipvsadm-style command line for Merlin. Exit codes: 0 done, 1 the call failed
/// (the reason is on stderr), 2 the command line was wrong.
/// </summary>
public sealed class MeradmApp
{
    private readonly CliContext _ctx;
    private readonly RootCommand _root;

    /// <param name="stdout">Where results go (tables, JSON, help).</param>
    /// <param name="stderr">Where errors go, one line each: <c>meradm: &lt;what failed&gt;: &lt;reason&gt;</c>.</param>
    /// <param name="clientFactory">Makes the gRPC client; null dials the daemon over h2c and closes the channel after the call.</param>
    public MeradmApp(TextWriter stdout, TextWriter stderr, MerlinClientFactory? clientFactory = null)
    {
        _ctx = new CliContext(stdout, stderr, clientFactory);
        _root = new RootCommand("meradm: manage Merlin's virtual services and real servers (ipvsadm-style)");
        foreach (var option in _ctx.Global.All) _root.Options.Add(option);
        _root.Subcommands.Add(ListCommand.Create(_ctx));
        _root.Subcommands.Add(ServiceCommands.Create(_ctx));
        _root.Subcommands.Add(ServerCommands.Create(_ctx));
        _root.Subcommands.Add(StatusCommand.Create(_ctx));
        _root.Subcommands.Add(NodeCommands.Create(_ctx));
        _root.Subcommands.Add(CompatCommand.Create(_ctx));
        _root.Subcommands.Add(HashCommands.Create(_ctx));
    }

    /// <summary>The command tree: what --help, the [suggest] completions and the man page (tools/Merlin.ManPages) are made from.</summary>
    public RootCommand Root => _root;

    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, MerlinClientFactory? clientFactory = null, CancellationToken ct = default) =>
        new MeradmApp(stdout, stderr, clientFactory).RunAsync(args, ct);

    public async Task<int> RunAsync(string[] args, CancellationToken ct = default)
    {
        var result = _root.Parse(args);
        if (result.Action is ParseErrorAction)
        {
            foreach (var error in result.Errors) _ctx.Error.WriteLine($"meradm: {error.Message}");
            _ctx.Error.WriteLine($"Run '{CommandPath(result.CommandResult.Command)} --help' for usage.");
            return CliContext.Usage;
        }
        var invocation = new InvocationConfiguration
        {
            Output = _ctx.Out,
            Error = _ctx.Error,
            EnableDefaultExceptionHandler = false,
        };
        try
        {
            return await result.InvokeAsync(invocation, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _ctx.Error.WriteLine($"meradm: unexpected error: {e}");
            return CliContext.Failed;
        }
    }

    private static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c; s = c.Parents.FirstOrDefault())
            names.Insert(0, c is RootCommand ? "meradm" : c.Name);
        return string.Join(' ', names);
    }
}
