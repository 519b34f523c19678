using System.CommandLine;
using System.CommandLine.Parsing;
using Merlin.Cli.Parsing;
using Merlin.Client;
using Merlin.Model;

namespace Merlin.Cli;

public enum OutputFormat { Table, Json }

/// <summary>Options every command accepts, before or after the command name.</summary>
internal sealed class GlobalOptions
{
    public Option<HostSpec> Host { get; } = Parsers.Option<HostSpec>("--host", ["-H"],
        "Daemon host name or address, optionally with the port (lb1:4282, [::1]:4282), or a URL (https://lb1:4282, unix:///run/merlin/merlin.sock) [default: 127.0.0.1]",
        (string text, out HostSpec value, out string? error) =>
        {
            var ok = HostSpec.TryParse(text, out var spec, out error);
            value = spec!;
            return ok;
        }, "host[:port]");

    public Option<string> UnixSocket { get; } = new("--unix-socket")
    {
        Description = "Talk to the daemon's local Unix socket (callers on it are admin), e.g. /run/merlin/merlin.sock",
        HelpName = "path",
    };

    public Option<string> Ca { get; } = new("--ca") { Description = "Use TLS, and trust only this CA (PEM) for the daemon's certificate", HelpName = "file" };

    public Option<string> Cert { get; } = new("--cert") { Description = "Use TLS, and show this client certificate (PEM)", HelpName = "file" };

    public Option<string> Key { get; } = new("--key") { Description = "The client certificate's private key (PEM) [default: in the --cert file]", HelpName = "file" };

    public Option<string> TokenFile { get; } = new("--token-file")
    {
        Description = "Send the bearer token in this file (the daemon's --tokens-file); only over TLS or to loopback",
        HelpName = "file",
    };

    public Option<uint> Port { get; } = Parsers.UInt("--port", ["-P"], "Daemon API port", 1, 65535, "port");

    public Option<TimeSpan> Timeout { get; } = Parsers.Duration("--timeout", "Give up on a call after this long: 500ms, 10s, 1m [default: 10s]");

    public Option<OutputFormat> Output { get; } = Parsers.Option<OutputFormat>("--output", ["-o"], "Output format: table or json [default: table]",
        (string text, out OutputFormat value, out string? error) =>
        {
            (value, error) = text.Trim().ToLowerInvariant() switch
            {
                "table" => (OutputFormat.Table, null),
                "json" => (OutputFormat.Json, (string?)null),
                _ => (OutputFormat.Table, $"{Validation.Quote(text)} is not table or json"),
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

    public IEnumerable<Option> All => [Host, Port, UnixSocket, Ca, Cert, Key, TokenFile, Timeout, Output];

    /// <summary>The connection the options describe, or a usage error when they disagree.</summary>
    public ConnectionOptions Resolve(ParseResult result, out string? error)
    {
        var host = result.IsGiven(Host) ? result.GetValue(Host)! : new HostSpec(ConnectionOptions.DefaultHost, null);
        var port = (ushort)result.GetValue(Port);
        var portGiven = result.IsGiven(Port);
        var timeout = result.IsGiven(Timeout) ? result.GetValue(Timeout) : ConnectionOptions.DefaultTimeout;
        var (ca, cert, key, tokenFile) = (result.GetValue(Ca), result.GetValue(Cert), result.GetValue(Key), result.GetValue(TokenFile));
        var tlsGiven = ca is not null || cert is not null || key is not null;
        error = null;

        var unixSocket = result.GetValue(UnixSocket) ?? host.UnixSocket;
        if (unixSocket is not null)
        {
            error = result.IsGiven(UnixSocket) && result.IsGiven(Host) ? "give --host or --unix-socket, not both"
                : portGiven ? "--port does not apply to a Unix socket"
                : tlsGiven || tokenFile is not null ? "--ca, --cert, --key and --token-file do not apply to a Unix socket (its callers are admin)"
                : null;
            return new ConnectionOptions("localhost", ConnectionOptions.DefaultPort, timeout) { UnixSocket = unixSocket };
        }

        if (host.Port is { } hostPort)
        {
            if (portGiven && hostPort != port)
                error = $"--host gives port {hostPort} but --port gives {port}: give the port once";
            port = hostPort;
        }
        ClientTls? tls = tlsGiven || host.Scheme == "https" ? new ClientTls(ca, cert, key) : null;
        if (tlsGiven && host.Scheme == "http") error ??= "--host http://… is plain HTTP/2, but --ca, --cert or --key ask for TLS: write https://";
        if (key is not null && cert is null) error ??= "--key: give the client certificate with --cert too";
        if (tokenFile is not null && tls is null && !IsLoopback(host.Host))
            error ??= $"--token-file: the token would cross the network to {host.Host} in the clear; use TLS (--ca, or --host https://…)";
        foreach (var (option, file) in new[] { ("--ca", ca), ("--cert", cert), ("--key", key), ("--token-file", tokenFile) })
            if (file is not null && !File.Exists(file)) error ??= $"{option}: {file} does not exist";
        return new ConnectionOptions(host.Host, port, timeout) { Tls = tls, TokenFile = tokenFile };
    }

    private static bool IsLoopback(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || (System.Net.IPAddress.TryParse(host, out var ip) && System.Net.IPAddress.IsLoopback(ip));
}
