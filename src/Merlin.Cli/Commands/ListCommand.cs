using System.CommandLine;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Contracts;
using Merlin.Cli.Output;
using Wire = Merlin.Contracts;

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
            var counters = result.GetValue(stats) ? await client.CountersAsync(new Empty(), options) : null;
            var json = ctx.Output(result) == OutputFormat.Json;
            var table = new Tables.ListWriter(ctx.Out, counters is not null);
            var all = new List<ServiceView>();
            await foreach (var response in ListParts(client, options))
            {
                var part = Views.From(response);
                if (counters is not null) part = Views.WithStats(part, counters);
                // A table is printed part by part as it arrives; JSON is one document.
                if (json) all.AddRange(part.Services);
                else table.Write(part);
            }
            if (json) Json.Write(ctx.Out, new ServiceList([.. all.OrderBy(s => s.Id, StringComparer.Ordinal)]));
            else table.End();
        }, ct));
        return command;
    }

    /// <summary>The list in parts (ListStream); from a daemon without it (the Go merlin, an older Merlin), List's one message.</summary>
    private static async IAsyncEnumerable<ListResponse> ListParts(Wire.Merlin.MerlinClient client, CallOptions options)
    {
        using (var call = client.ListStream(new Empty(), options))
        {
            var first = true;
            while (true)
            {
                bool more;
                try
                {
                    more = await call.ResponseStream.MoveNext(options.CancellationToken);
                }
                catch (RpcException e) when (first && e.StatusCode == StatusCode.Unimplemented)
                {
                    break;
                }
                if (!more) yield break;
                first = false;
                yield return call.ResponseStream.Current;
            }
        }
        yield return await client.ListAsync(new Empty(), options);
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
