using System.CommandLine;
using System.Net;
using Merlin.Client;
using Validation = Merlin.Model.Validation;
using OptionValues = Merlin.Model.OptionValues;
using OptionValueException = Merlin.Model.OptionValueException;
using Durations = Merlin.Model.Durations;
using Merlin.Contracts;

namespace Merlin.Agent;

/// <summary>What the command line asks for, checked: where the API is, what to register, where to keep state.</summary>
public sealed record AgentInvocation(ConnectionOptions Connection, AgentOptions Agent, string StateFile, string LogFormat);

/// <summary>merlin-agent's options. Every mistake is reported with the option it is about.</summary>
public sealed class AgentCommandLine
{
    public const ushort DefaultPort = 4282;
    public const string DefaultStateDir = "/var/lib/merlin-agent";

    /// <summary>The settings a flag not given leaves: AgentOptions' own defaults, which --help shows.</summary>
    private static readonly AgentOptions Defaults = new() { Services = [], Addresses = [] };

    private readonly Option<string> _api = new("--api") { Description = $"The load balancers' API, host[:port] — their management VIP [default port: {DefaultPort}]", Required = true, HelpName = "host[:port]" };
    private readonly Option<string[]> _services = new("--service") { Description = "A service (its ID in the store) this node serves; repeat for more", Required = true, HelpName = "id" };
    private readonly Option<string[]> _addresses = new("--address") { Description = "This node's own address (one per family it serves); its real-server IP", Required = true, HelpName = "ip" };
    private readonly Option<string> _weight = new("--weight") { Description = $"Weight of this node in each service [default: {Defaults.Weight}]", HelpName = "n" };
    private readonly Option<string> _forward = new("--forward") { Description = $"route (direct server return) or tunnel [default: {Defaults.Forward.ToString().ToLowerInvariant()}]", HelpName = "route|tunnel" };
    private readonly Option<string> _healthEndpoint = new("--health-endpoint") { Description = "Health check the load balancers run, e.g. http://:80/healthz [default: none, no health check]", HelpName = "url" };
    private readonly Option<string> _healthPeriod = new("--health-period") { Description = "Between checks, 100ms to 1h [default: 2s]", HelpName = "duration" };
    private readonly Option<string> _healthTimeout = new("--health-timeout") { Description = "Per check, at most the period [default: 1s, or the period if shorter]", HelpName = "duration" };
    private readonly Option<string> _healthUp = new("--health-up") { Description = "Passing checks in a row before up [default: 2]", HelpName = "n" };
    private readonly Option<string> _healthDown = new("--health-down") { Description = "Failing checks in a row before down [default: 2]", HelpName = "n" };
    private readonly Option<string> _drainPeriod = new("--drain-period") { Description = $"On SIGTERM: how long established connections may finish before the node is removed (0s: remove at once) [default: {Durations.Format(Defaults.DrainPeriod)}]", HelpName = "duration" };
    private readonly Option<string> _stateDir = new("--state-dir") { Description = $"Where the node's original settings are remembered [default: {DefaultStateDir}]", HelpName = "dir" };
    private readonly Option<string> _timeout = new("--timeout") { Description = $"Deadline of each API call, at least {Durations.Format(AgentOptionsValidator.MinCallTimeout)} [default: {Durations.Format(Defaults.CallTimeout)}]", HelpName = "duration" };
    private readonly Option<string> _ca = new("--ca") { Description = "Use TLS, and trust only this CA (PEM) for the daemon's certificate [default: none, the system's CAs if --cert is given, else no TLS]", HelpName = "file" };
    private readonly Option<string> _cert = new("--cert") { Description = "Use TLS, and show this client certificate (PEM; role realserver, this node's IP as an IP SAN) [default: none]", HelpName = "file" };
    private readonly Option<string> _key = new("--key") { Description = "The client certificate's private key (PEM) [default: in the --cert file]", HelpName = "file" };
    private readonly Option<string> _tokenFile = new("--token-file") { Description = "Send the bearer token in this file; only over TLS or to loopback [default: none]", HelpName = "file" };
    private readonly Option<string> _hashSeed = new("--hash-seed") { Description = "Second chance: the load balancers' nftables --hash-seed; with it, connections of md-table services whose slot moved are handed to their previous owner (docs/operations.md) [default: none, second chance off]", HelpName = "hex" };
    private readonly Option<string> _metricsAddress = new("--metrics-address") { Description = "Serve Prometheus metrics (second-chance hand-offs) on ip:port at /metrics [default: none]", HelpName = "ip:port" };
    private readonly Option<string> _logFormat = new("--log-format") { Description = "text or json [default: text]", HelpName = "text|json" };

    public RootCommand Root { get; }

    public AgentCommandLine()
    {
        Root = new RootCommand("merlin-agent: attach this node to Merlin's load balancers as a real server (direct server return), and detach it gracefully on SIGTERM");
        foreach (var o in new Option[] { _api, _services, _addresses, _weight, _forward, _healthEndpoint, _healthPeriod, _healthTimeout, _healthUp, _healthDown, _drainPeriod, _stateDir, _timeout, _ca, _cert, _key, _tokenFile, _logFormat, _hashSeed, _metricsAddress })
            Root.Options.Add(o);
    }

    /// <summary>The invocation the parsed options describe, or the first error (naming its option).</summary>
    public AgentInvocation? Bind(ParseResult r, out string? error)
    {
        error = null;
        try
        {
            return BindOrThrow(r);
        }
        catch (Exception e) when (e is OptionError or OptionValueException)
        {
            error = e.Message;
            return null;
        }
    }

    private AgentInvocation BindOrThrow(ParseResult r)
    {
        var (host, port) = ParseHost(r.GetValue(_api)!);
        var timeout = Duration(r, _timeout, Defaults.CallTimeout, min: AgentOptionsValidator.MinCallTimeout);
        var (ca, cert, key, tokenFile) = (r.GetValue(_ca), r.GetValue(_cert), r.GetValue(_key), r.GetValue(_tokenFile));
        if (key is not null && cert is null) throw new OptionError("--key: needs --cert (the certificate it belongs to)");
        var tls = ca is not null || cert is not null ? new ClientTls(ca, cert, key) : null;
        if (tokenFile is not null && tls is null && !(IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip)))
            throw new OptionError("--token-file: a token is sent only over TLS or to loopback; add --ca");
        var connection = new ConnectionOptions(host, port, timeout) { Tls = tls, TokenFile = tokenFile };

        var services = r.GetValue(_services)!;
        var addresses = new List<IPAddress>();
        foreach (var text in r.GetValue(_addresses)!)
        {
            if (!IPAddress.TryParse(text, out var a) || text.Contains('/'))
                throw new OptionError($"--address: {Validation.Quote(text)} is not an IP address (this node's own, without a prefix length)");
            addresses.Add(a);
        }

        var weight = UInt(r, _weight, Defaults.Weight, 0, int.MaxValue);
        var forward = r.GetValue(_forward)?.Trim().ToLowerInvariant() switch
        {
            null or "route" or "dr" => ForwardMethod.Route,
            "tunnel" or "ipip" => ForwardMethod.Tunnel,
            var other => throw new OptionError($"--forward: {Validation.Quote(other)} is not route or tunnel (masq needs no agent: the server does not hold the VIP)"),
        };

        RealServer.Types.HealthCheck? health = null;
        if (r.GetValue(_healthEndpoint) is { Length: > 0 } endpoint)
        {
            if (Validation.HealthEndpoint(endpoint, _healthEndpoint.Name, out _) is { } endpointError) throw new OptionError(endpointError.ToString());
            var (period, checkTimeout) = OptionValues.HealthTiming(r.GetValue(_healthPeriod), _healthPeriod.Name, r.GetValue(_healthTimeout), _healthTimeout.Name);
            health = new RealServer.Types.HealthCheck
            {
                Endpoint = endpoint,
                Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(period),
                Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(checkTimeout),
                UpThreshold = UInt(r, _healthUp, 2, 1, 100),
                DownThreshold = UInt(r, _healthDown, 2, 1, 100),
            };
        }
        else if (new[] { _healthPeriod, _healthTimeout, _healthUp, _healthDown }.Any(o => r.GetValue(o) is not null))
        {
            throw new OptionError("--health-endpoint: required with --health-period, --health-timeout, --health-up or --health-down");
        }

        var drain = Duration(r, _drainPeriod, Defaults.DrainPeriod, TimeSpan.Zero);
        var logFormat = r.GetValue(_logFormat)?.Trim().ToLowerInvariant() ?? "text";
        if (logFormat is not ("text" or "json")) throw new OptionError($"--log-format: {Validation.Quote(logFormat)} is not text or json");
        var stateDir = r.GetValue(_stateDir) ?? DefaultStateDir;

        var agent = new AgentOptions
        {
            Services = services,
            Addresses = addresses,
            Weight = weight,
            Forward = forward,
            HealthCheck = health,
            DrainPeriod = drain,
            CallTimeout = timeout,
            Headers = GrpcConnection.Headers(connection),
            SecondChanceSeed = SecondChanceSeed(r.GetValue(_hashSeed)),
            MetricsAddress = MetricsAddress(r.GetValue(_metricsAddress)),
        };
        // The rules between values (services, addresses, the drain…) are the section's (AgentOptionsValidator), which
        // the agent's Program runs again at start as ValidateOnStart.
        if (AgentSections.Check(agent) is { } rule) throw new OptionError(rule);
        return new AgentInvocation(connection, agent, Path.Combine(stateDir, "node.json"), logFormat);
    }

    private static IPEndPoint? MetricsAddress(string? text)
    {
        if (text is null) return null;
        if (!IPEndPoint.TryParse(text, out var endpoint) || endpoint.Port == 0)
            throw new OptionError($"--metrics-address: {Validation.Quote(text)} is not ip:port (e.g. 127.0.0.1:9477)");
        return endpoint;
    }

    private static uint? SecondChanceSeed(string? text)
    {
        try { return text is null ? null : Merlin.Dataplane.Nftables.NftablesOptions.ParseSeed(text); }
        catch (FormatException e) { throw new OptionError($"--hash-seed: {e.Message}"); }
    }

    internal static (string Host, ushort Port) ParseHost(string text) =>
        HostSpec.TryParseHostPort(text, DefaultPort, out var host, out var port, out var error) ? (host, port) : throw new OptionError($"--api: {error}");

    private static TimeSpan Duration(ParseResult r, Option<string> option, TimeSpan fallback, TimeSpan min) =>
        OptionValues.Duration(r.GetValue(option), option.Name, fallback, min);

    private static uint UInt(ParseResult r, Option<string> option, uint fallback, uint min, uint max) =>
        OptionValues.UInt(r.GetValue(option), option.Name, fallback, min, max);

    internal sealed class OptionError(string message) : Exception(message);
}
