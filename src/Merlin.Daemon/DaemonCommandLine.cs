using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using Merlin.Model;

namespace Merlin.Daemon;

/// <summary>
/// merlin's flags as a System.CommandLine tree: each declared once with its default and meaning, which <c>merlin --help</c>
/// and the man page (tools/Merlin.ManPages) print. The tree only reads the command line: values stay text here, because
/// the environment and the <c>--config</c> file give the same settings as text too, and all three are checked in one
/// place (<see cref="DaemonOptions.From"/>) with the same messages.
/// </summary>
public sealed class DaemonCommandLine
{
    public const string Summary = "merlin: the Merlin load-balancer daemon";

    public RootCommand Root { get; }

    /// <summary>Every flag, in --help's order.</summary>
    public IReadOnlyList<Option> Flags { get; }

    /// <summary>Flags that stand alone (<c>--manage-sysctls</c>) or take true or false.</summary>
    private readonly HashSet<Option> _switches = [];

    /// <summary>Flags that may be given more than once, their values joined with commas.</summary>
    private readonly HashSet<Option> _repeatable = [];

    public DaemonCommandLine()
    {
        var d = new DaemonOptions();
        var flags = new List<Option>
        {
            Value("--listen-address", "address of the gRPC API", d.ListenAddress.ToString(), "ip"),
            Value("--port", "gRPC API port (HTTP/2)", d.Port.ToString(), "port"),
            Value("--health-listen-address", "address of the health and metrics port", d.HealthListenAddress.ToString(), "ip"),
            Value("--health-port", "/healthz, /readyz, /status, /metrics and the status page / (HTTP/1)", d.HealthPort.ToString(), "port"),
            Value("--store-backend", "sqlite or etcd3", d.StoreBackend, "sqlite|etcd3"),
            Value("--store-endpoints", "etcd client URLs, comma-separated", string.Join(",", d.StoreEndpoints), "urls"),
            Value("--store-prefix", "etcd key prefix", d.StorePrefix, "prefix"),
            Value("--store-path", "the SQLite store's file", d.StorePath, "file"),
            Value("--store-timeout", "bound on every store call", Durations.Format(d.StoreTimeout), "duration"),
            Value("--second-chance-window", "md-table services: how long a moved slot's previous owner is kept for second chance (drains: until removed)", Durations.Format(d.SecondChanceWindow), "duration"),
            Value("--reconcile-sync-period", "full resync period; repairs changes made behind merlin's back", Durations.Format(d.SyncPeriod), "duration"),
            Value("--dataplane", "none (control plane only), ipvs, nftables, or auto (IPVS when the kernel has it, else nftables)", d.DataplaneKind, "none|ipvs|nftables|auto"),
            Value("--interface", "nftables: the interface DSR traffic arrives on and leaves by", null, "name"),
            Value("--hash-seed", "nftables: the jhash seed, hex; required, and the same on every node", null, "hex"),
            Switch("--ipvs-own-all", "ipvs: own the whole IPVS table, as the Go merlin did (deletes every service not in the store)", d.IpvsOwnAll),
            Switch("--manage-sysctls", "ipvs: set the IPVS sysctls instead of only reporting their drift", d.ManageSysctls),
            Value("--state-dir", "node-local state: owned IPVS services, the node drain, the node lock", d.StateDir, "dir"),
            Value("--netns", "program the dataplane of this named network namespace instead of the daemon's own", null, "name"),
            Value("--tls-cert", "the API's certificate (PEM): TLS on the API port", null, "file"),
            Value("--tls-key", "the API certificate's private key (PEM)", null, "file"),
            Value("--tls-client-ca", "callers present a client certificate issued by this CA (PEM); it names their role", null, "file"),
            Value("--tokens-file", "bearer tokens, one a line: token role [ip...]", null, "file"),
            Value("--unix-socket", "also serve the API on this Unix socket; its callers are admin", null, "path"),
            Switch("--allow-insecure", "serve the API beyond loopback without TLS or without credentials", d.AllowInsecure),
            Value("--announcer", "who holds the VIPs: static (you place them), vrrp (a keepalived pair) or bgp (an ECMP fleet)", d.AnnouncerMode, "static|vrrp|bgp"),
            Value("--vrrp-interface", "vrrp: the interface that holds the VIPs and carries the adverts [default: --interface]", null, "name"),
            Value("--vrrp-router-id", "vrrp: virtual router id 1-255, the same on both nodes, unique on the LAN; required", null, "id"),
            Value("--vrrp-priority", "vrrp: 1-254; the higher one becomes MASTER at a cold start", "100", "n"),
            Repeatable("--vrrp-peer", "vrrp: the other node's own address; repeat (or comma-separate) for more; required", "ip"),
            Switch("--vrrp-preempt", "vrrp: a returning node with a higher priority takes the VIPs back", false),
            Value("--vrrp-advert-interval", "vrrp: VRRPv3 advert interval, 10 ms steps", "1s", "duration"),
            Value("--vrrp-start-window", "vrrp, without --vrrp-preempt: how long a node that took VIPs nobody held may still be replaced by a higher priority", "60s", "duration"),
            Value("--management-vip", "vrrp: the address the API is reachable on at whichever node is MASTER; required", null, "ip"),
            Value("--keepalived", "vrrp: the keepalived executable", "keepalived", "path"),
            Value("--bgp-asn", "bgp: this node's AS; required", null, "asn"),
            Value("--bgp-router-id", "bgp: an IPv4 address unique among the peers (usually the node's own); required", null, "ipv4"),
            Repeatable("--bgp-peer", "bgp: a router as ADDRESS:ASN ([v6]:ASN for IPv6); repeat for more; required", "address:asn"),
            Repeatable("--bgp-local-address", "bgp: the sessions' source address, one IPv4 and/or one IPv6 [default: the kernel's choice]", "ip"),
            Value("--bgp-hold-time", "bgp: how long a router keeps a silent node's routes; keepalives every third", "9s", "duration"),
            Value("--bgp-store-grace", "bgp: how long a node that cannot read the store keeps announcing before it withdraws", "120s", "duration"),
            Value("--gobgpd", "bgp: the gobgpd executable", "gobgpd", "path"),
            Switch("--health-keepalive", "plain HTTP health checks keep one connection per server; false: a new connection per check", d.HealthKeepAlive),
            Value("--log-format", "text, or json for log shippers", d.LogFormat, "text|json"),
            Value("--log-level", "debug, information, warning or error", d.LogLevel, "level"),
            Value("--config", "a JSON file whose keys are the flags without their dashes, e.g. {\"store-backend\": \"etcd3\"}", null, "file"),
        };
        Flags = flags;
        Root = new RootCommand(Summary + ". Every flag can also be set as MERLIN_<FLAG> in the environment (MERLIN_STORE_BACKEND=etcd3) " +
                               "or in the --config file; flags win over the environment, which wins over the file.");
        foreach (var flag in flags) Root.Options.Add(flag);
    }

    /// <summary>
    /// The flags given on <paramref name="args"/>, as configuration keys (the flag without its dashes) and text values;
    /// repeated flags joined with commas, switches given alone as <c>true</c>. Flags not given are absent, so the
    /// environment and the file can still set them. Null when <paramref name="args"/> asks for --help or --version.
    /// </summary>
    /// <exception cref="OptionsException">A flag merlin does not know, a stray word, or a switch that is not true or false.</exception>
    public Dictionary<string, string?> Read(string[] args)
    {
        // --switch=word: the parser leaves a word that is not true or false aside as a stray one; it is the switch's bad value.
        foreach (var arg in args)
            if (_switches.FirstOrDefault(s => arg.StartsWith(s.Name + "=", StringComparison.Ordinal)) is { } flag && !bool.TryParse(arg[(flag.Name.Length + 1)..], out _))
                throw new OptionsException($"{flag.Name}: {Validation.Quote(arg[(flag.Name.Length + 1)..])} is not true or false");
        var result = Root.Parse(args);
        if (result.UnmatchedTokens.FirstOrDefault() is { } stray)
            throw new OptionsException(stray.StartsWith('-')
                ? $"{stray.Split('=')[0]}: unknown flag (known: {string.Join(", ", Flags.Select(f => f.Name))})"
                : $"{Validation.Quote(stray)}: unexpected argument (flags are --name value or --name=value)");
        if (result.Errors.FirstOrDefault() is { } error)
            throw new OptionsException(error.SymbolResult is OptionResult { Tokens.Count: 0 } missing
                ? $"{missing.Option.Name}: needs a value"
                : error.Message);
        var values = new Dictionary<string, string?>();
        foreach (var flag in Flags)
        {
            if (result.GetResult(flag) is not { Implicit: false } given) continue;
            var tokens = given.Tokens.Select(t => t.Value).ToList();
            values[flag.Name[2..]] = _switches.Contains(flag) ? (tokens.Count == 0 ? "true" : tokens[^1])
                : _repeatable.Contains(flag) ? string.Join(",", tokens)
                : tokens[^1]; // a flag given twice: the last one counts, as a flag added to the unit's command line overrides
        }
        return values;
    }

    /// <summary>True when <paramref name="args"/> asks for help or the version rather than a daemon.</summary>
    public bool IsHelpOrVersion(string[] args, out ParseResult result)
    {
        result = Root.Parse(args);
        var version = Root.Options.OfType<VersionOption>().Single();
        return result.Action is HelpAction || (result.Action is not null && result.Action == version.Action);
    }

    private static Option<string> Value(string name, string meaning, string? @default, string helpName)
    {
        // OneOrMore, one per occurrence: a flag given twice is not an error, the last one counts.
        var option = new Option<string>(name) { Description = meaning, HelpName = helpName, Arity = ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false };
        option.CustomParser = r => r.Tokens[^1].Value;
        // Only for --help: a value not given is left to the environment and the file (see Read).
        if (@default is not null) option.DefaultValueFactory = _ => @default;
        return option;
    }

    private Option<string[]> Repeatable(string name, string meaning, string helpName)
    {
        var option = new Option<string[]>(name)
        {
            Description = meaning,
            HelpName = helpName,
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        _repeatable.Add(option);
        return option;
    }

    /// <summary>
    /// A bool, so that the parser takes the next word as its value only when it is true or false (<c>--manage-sysctls eth0</c>
    /// is a stray eth0); <c>--flag=word</c> is checked here, with the same message the environment and the file get.
    /// </summary>
    private Option<bool> Switch(string name, string meaning, bool @default)
    {
        var option = new Option<bool>(name)
        {
            Description = $"{meaning} [default: {(@default ? "on" : "off")}]",
            Arity = ArgumentArity.ZeroOrOne,
            CustomParser = r =>
            {
                if (r.Tokens.Count == 0) return true;
                if (bool.TryParse(r.Tokens[0].Value, out var value)) return value;
                r.AddError($"{name}: {Validation.Quote(r.Tokens[0].Value)} is not true or false");
                return false;
            },
        };
        _switches.Add(option);
        return option;
    }
}
