using System.CommandLine;
using Google.Protobuf.WellKnownTypes;
using Merlin.Model;
using Merlin.Contracts;

namespace Merlin.Cli.Commands;

/// <summary>
/// <c>meradm compat [go-merlin|off]</c>: show or set the store's compatibility mode. It is kept in the store, so
/// setting it through any node applies to every node's API.
/// </summary>
internal static class CompatCommand
{
    public static Command Create(CliContext ctx)
    {
        var command = new Command("compat", $"Show or set the compatibility mode: {GoMerlin.Mode} while a Go merlin shares the store " +
                                            "(the API then refuses records it cannot program: SCTP, IPv6, fwmark, …), off once none is left");
        var mode = new Argument<string?>("mode") { Description = $"{GoMerlin.Mode} or off; none to show the mode", Arity = ArgumentArity.ZeroOrOne };
        mode.AcceptOnlyFromAmong(GoMerlin.Mode, "off");
        command.Arguments.Add(mode);
        command.SetAction((result, ct) => ctx.CallAsync(result, "compat", async (client, options) =>
        {
            var settings = result.GetValue(mode) is { } wanted
                ? await client.UpdateSettingsAsync(new Settings { Compatibility = wanted == "off" ? "" : wanted }, options)
                : await client.GetSettingsAsync(new Empty(), options);
            ctx.Out.WriteLine(Describe(settings.Compatibility));
        }, ct));
        return command;
    }

    public static string Describe(string compatibility) => compatibility switch
    {
        "" => "off",
        GoMerlin.Mode => $"{GoMerlin.Mode} (the API refuses records a Go merlin cannot program)",
        _ => compatibility,
    };
}
