using System.CommandLine;
using Google.Protobuf.WellKnownTypes;
using Merlin.Cli.Output;

namespace Merlin.Cli.Commands;

internal static class ListCommand
{
    public static Command Create(CliContext ctx)
    {
        var command = new Command("list", "List every service with its servers");
        command.Aliases.Add("ls");
        var stats = new Option<bool>("--stats") { Description = "Add the kernel's counters: connections, packets and bytes per service and server" };
        command.Options.Add(stats);
        command.SetAction((result, ct) => ctx.CallAsync(result, "list services", async (client, options) =>
        {
            var list = Views.From(await client.ListAsync(new Empty(), options));
            if (result.GetValue(stats)) list = Views.WithStats(list, await client.CountersAsync(new Empty(), options));
            if (ctx.Output(result) == OutputFormat.Json) Json.Write(ctx.Out, list);
            else Tables.WriteList(ctx.Out, list);
        }, ct));
        return command;
    }
}

/// <summary><c>meradm node drain|undrain</c>: take this node out of the routers' paths, or put it back.</summary>
internal static class NodeCommands
{
    public static Command Create(CliContext ctx)
    {
        var command = new Command("node", "Drain or undrain the node whose daemon answers (--host): its VIPs are withdrawn or announced again");
        command.Subcommands.Add(One(ctx, drain: true));
        command.Subcommands.Add(One(ctx, drain: false));
        return command;
    }

    private static Command One(CliContext ctx, bool drain)
    {
        var command = new Command(drain ? "drain" : "undrain", drain
            ? "Withdraw every VIP this node announces and keep them withdrawn, across restarts, until undrained; returns when the routers were told. The node keeps forwarding what still reaches it."
            : "Announce this node's VIPs again after a drain");
        command.SetAction((result, ct) => ctx.CallAsync(result, drain ? "node drain" : "node undrain", async (client, options) =>
        {
            var status = Views.From(drain ? await client.DrainNodeAsync(new Empty(), options) : await client.UndrainNodeAsync(new Empty(), options));
            if (ctx.Output(result) == OutputFormat.Json) Json.Write(ctx.Out, status);
            else Tables.WriteStatus(ctx.Out, status);
        }, ct));
        return command;
    }
}

internal static class StatusCommand
{
    public static Command Create(CliContext ctx)
    {
        var command = new Command("status", "Show the daemon's state: store, dataplane, reconciler");
        command.SetAction((result, ct) => ctx.CallAsync(result, "status", async (client, options) =>
        {
            var status = Views.From(await client.StatusAsync(new Empty(), options));
            if (ctx.Output(result) == OutputFormat.Json) Json.Write(ctx.Out, status);
            else Tables.WriteStatus(ctx.Out, status);
        }, ct));
        return command;
    }
}
