using System.CommandLine;
using System.CommandLine.Parsing;
using Merlin.Cli.Parsing;

namespace Merlin.Cli;

public enum OutputFormat { Table, Json }

/// <summary>Options every command accepts, before or after the command name.</summary>
internal sealed class GlobalOptions
{
    public Option<HostSpec> Host { get; } = Parsers.Option<HostSpec>("--host", ["-H"],
        "Daemon host name or address, optionally with the port (lb1:4282, [::1]:4282) [default: 127.0.0.1]",
        (string text, out HostSpec value, out string? error) =>
        {
            var ok = HostSpec.TryParse(text, out var spec, out error);
            value = spec!;
            return ok;
        }, "host[:port]");

    public Option<uint> Port { get; } = Parsers.UInt("--port", ["-P"], "Daemon API port", 1, 65535, "port");

    public Option<TimeSpan> Timeout { get; } = Parsers.Duration("--timeout", "Give up on a call after this long: 500ms, 10s, 1m [default: 10s]");

    public Option<OutputFormat> Output { get; } = Parsers.Option<OutputFormat>("--output", ["-o"], "Output format: table or json [default: table]",
        (string text, out OutputFormat value, out string? error) =>
        {
            (value, error) = text.Trim().ToLowerInvariant() switch
            {
                "table" => (OutputFormat.Table, null),
                "json" => (OutputFormat.Json, (string?)null),
                _ => (OutputFormat.Table, $"\"{text}\" is not table or json"),
            };
            return error is null;
        }, "table|json");

    public GlobalOptions()
    {
        // Defaults for host, timeout and output are applied in Resolve/Output (help shows them in the
        // description); a DefaultValueFactory would print them with ToString().
        Port.DefaultValueFactory = _ => ConnectionOptions.DefaultPort;
        Output.CompletionSources.Add("table", "json");
        foreach (var option in All) option.Recursive = true;
    }

    public IEnumerable<Option> All => [Host, Port, Timeout, Output];

    /// <summary>The connection the options describe, or a usage error when they disagree.</summary>
    public ConnectionOptions Resolve(ParseResult result, out string? error)
    {
        var host = result.IsGiven(Host) ? result.GetValue(Host)! : new HostSpec(ConnectionOptions.DefaultHost, null);
        var port = (ushort)result.GetValue(Port);
        var portGiven = result.IsGiven(Port);
        error = null;
        if (host.Port is { } hostPort)
        {
            if (portGiven && hostPort != port)
                error = $"--host gives port {hostPort} but --port gives {port}: give the port once";
            port = hostPort;
        }
        var timeout = result.IsGiven(Timeout) ? result.GetValue(Timeout) : ConnectionOptions.DefaultTimeout;
        return new ConnectionOptions(host.Host, port, timeout);
    }
}
