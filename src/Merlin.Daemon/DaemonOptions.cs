using System.Globalization;
using System.Net;
using System.Reflection;
using Merlin.Model;
using Microsoft.Extensions.Configuration;

namespace Merlin.Daemon;

/// <summary>
/// The daemon's settings. Flags keep the original merlin's names (declared in <see cref="DaemonCommandLine"/>); every flag
/// can also come from a JSON file (<c>--config</c>) or the environment (<c>MERLIN_STORE_BACKEND</c> → <c>--store-backend</c>).
/// Precedence: flags over environment over file.
/// </summary>
public sealed record DaemonOptions
{
    // The sections the daemon's parts are given (IOptions<T>, see DaemonSections); the flat properties below read and
    // write them under the flags' names, so a test or a benchmark can still say `new DaemonOptions { Port = … }`.
    public StoreSection Store { get; init; } = new();
    public ApiSection Api { get; init; } = new();
    public HealthSection Health { get; init; } = new();
    public DataplaneSection Dataplane { get; init; } = new();
    public AnnouncerSection Announcer { get; init; } = new();

    public IPAddress ListenAddress { get => Api.ListenAddress; init => Api = Api with { ListenAddress = value }; }
    public int Port { get => Api.Port; init => Api = Api with { Port = value }; }
    public IPAddress HealthListenAddress { get => Health.ListenAddress; init => Health = Health with { ListenAddress = value }; }
    public int HealthPort { get => Health.Port; init => Health = Health with { Port = value }; }
    public string StoreBackend { get => Store.Backend; init => Store = Store with { Backend = value }; }
    public IReadOnlyList<string> StoreEndpoints { get => Store.Endpoints; init => Store = Store with { Endpoints = value }; }
    public string StorePrefix { get => Store.Prefix; init => Store = Store with { Prefix = value }; }
    public string StorePath { get => Store.Path; init => Store = Store with { Path = value }; }
    public TimeSpan StoreTimeout { get => Store.Timeout; init => Store = Store with { Timeout = value }; }
    public TimeSpan SecondChanceWindow { get => Store.SecondChanceWindow; init => Store = Store with { SecondChanceWindow = value }; }
    /// <summary>--reconcile-sync-period: the reconciler's full resync period.</summary>
    public TimeSpan SyncPeriod { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>--dataplane: none, ipvs, nftables or auto.</summary>
    public string DataplaneKind { get => Dataplane.Kind; init => Dataplane = Dataplane with { Kind = value }; }
    public string? Interface { get => Dataplane.Interface; init => Dataplane = Dataplane with { Interface = value }; }
    public uint? HashSeed { get => Dataplane.HashSeed; init => Dataplane = Dataplane with { HashSeed = value }; }
    public bool IpvsOwnAll { get => Dataplane.IpvsOwnAll; init => Dataplane = Dataplane with { IpvsOwnAll = value }; }
    public bool ManageSysctls { get => Dataplane.ManageSysctls; init => Dataplane = Dataplane with { ManageSysctls = value }; }
    /// <summary>A named network namespace whose dataplane the daemon programs and whose servers it checks (default: its own).</summary>
    public string? NetworkNamespace { get; init; }
    /// <summary>Where the daemon keeps node-local state (which IPVS services it created, a drain, the node lock).</summary>
    public string StateDir { get; init; } = "/var/lib/merlin";
    public string? TlsCert { get => Api.TlsCert; init => Api = Api with { TlsCert = value }; }
    public string? TlsKey { get => Api.TlsKey; init => Api = Api with { TlsKey = value }; }
    public string? TlsClientCa { get => Api.TlsClientCa; init => Api = Api with { TlsClientCa = value }; }
    public string? TokensFile { get => Api.TokensFile; init => Api = Api with { TokensFile = value }; }
    public string? UnixSocket { get => Api.UnixSocket; init => Api = Api with { UnixSocket = value }; }
    public bool AllowInsecure { get => Api.AllowInsecure; init => Api = Api with { AllowInsecure = value }; }
    /// <summary>--announcer: static, vrrp or bgp.</summary>
    public string AnnouncerMode { get => Announcer.Mode; init => Announcer = Announcer with { Mode = value }; }
    public Merlin.Announcer.Vrrp.VrrpOptions? Vrrp { get => Announcer.Vrrp; init => Announcer = Announcer with { Vrrp = value }; }
    public Merlin.Announcer.Bgp.BgpOptions? Bgp { get => Announcer.Bgp; init => Announcer = Announcer with { Bgp = value }; }
    public TimeSpan? StoreGrace { get => Announcer.StoreGrace; init => Announcer = Announcer with { StoreGrace = value }; }
    public bool HealthKeepAlive { get => Health.KeepAlive; init => Health = Health with { KeepAlive = value }; }
    public string LogFormat { get; init; } = "text";
    public string LogLevel { get; init; } = "information";

    /// <summary>
    /// What <c>merlin --version</c> prints: the informational version (Directory.Build.props' Version and the git commit),
    /// the same text as System.CommandLine's --version in meradm, merlin-agent and merlin-k8s.
    /// </summary>
    public static string Version =>
        typeof(DaemonOptions).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    public static readonly IReadOnlyList<string> Dataplanes = ["none", "ipvs", "nftables", "auto"];

    public static readonly IReadOnlyList<string> Announcers = ["static", "vrrp", "bgp"];

    /// <summary>
    /// The settings from the three places they may come from, as text under the flags' names without dashes:
    /// the command line (<see cref="DaemonCommandLine"/>) over the environment (<c>MERLIN_STORE_BACKEND</c>) over the
    /// JSON file that <c>--config</c> names.
    /// </summary>
    public static IConfiguration BuildConfiguration(string[] args, IDictionary<string, string?>? environment = null)
    {
        var flags = new DaemonCommandLine().Read(args);
        var builder = new ConfigurationBuilder();
        var file = flags.GetValueOrDefault("config");
        if (file is not null)
        {
            if (!File.Exists(file)) throw new OptionsException($"--config: {file} does not exist");
            builder.AddJsonFile(Path.GetFullPath(file), optional: false);
        }
        // MERLIN_STORE_BACKEND → store-backend
        var env = environment ?? Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(e => (string)e.Key, e => (string?)e.Value);
        builder.AddInMemoryCollection(env
            .Where(e => e.Key.StartsWith("MERLIN_", StringComparison.Ordinal))
            .Select(e => KeyValuePair.Create(e.Key["MERLIN_".Length..].ToLowerInvariant().Replace('_', '-'), e.Value)));
        builder.AddInMemoryCollection(flags);
        try
        {
            return builder.Build();
        }
        catch (InvalidDataException e)
        {
            throw new OptionsException($"--config: {file} is not valid JSON: {e.InnerException?.Message ?? e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OptionsException($"--config: cannot read {file}: {e.Message}");
        }
    }

    public static DaemonOptions From(IConfiguration config)
    {
        var d = new DaemonOptions();
        var options = new DaemonOptions
        {
            ListenAddress = Address(config, "listen-address", d.ListenAddress),
            Port = PortOf(config, "port", d.Port),
            HealthListenAddress = Address(config, "health-listen-address", d.HealthListenAddress),
            HealthPort = PortOf(config, "health-port", d.HealthPort),
            StoreBackend = OneOf(config, "store-backend", d.StoreBackend, ["sqlite", "etcd3", "etcd"]),
            StoreEndpoints = config["store-endpoints"] is { } e
                ? e.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                : d.StoreEndpoints,
            StorePrefix = config["store-prefix"] ?? d.StorePrefix,
            StorePath = config["store-path"] ?? d.StorePath,
            StoreTimeout = Duration(config, "store-timeout", d.StoreTimeout),
            SecondChanceWindow = Duration(config, "second-chance-window", d.SecondChanceWindow),
            SyncPeriod = Duration(config, "reconcile-sync-period", d.SyncPeriod),
            DataplaneKind = OneOf(config, "dataplane", d.DataplaneKind, Dataplanes),
            Interface = config["interface"],
            HashSeed = config["hash-seed"] is { } seed ? Seed(seed) : null,
            IpvsOwnAll = Bool(config, "ipvs-own-all", d.IpvsOwnAll),
            ManageSysctls = Bool(config, "manage-sysctls", d.ManageSysctls),
            StateDir = StateDirectory(config["state-dir"] ?? d.StateDir),
            NetworkNamespace = config["netns"] is { Length: > 0 } ns
                ? (File.Exists(Path.Combine("/run/netns", ns)) ? ns : throw new OptionsException($"--netns: no network namespace {Validation.Quote(ns)} (/run/netns/{ns} does not exist)"))
                : null,
            TlsCert = NonEmpty(config, "tls-cert"),
            TlsKey = NonEmpty(config, "tls-key"),
            TlsClientCa = NonEmpty(config, "tls-client-ca"),
            TokensFile = NonEmpty(config, "tokens-file"),
            UnixSocket = NonEmpty(config, "unix-socket"),
            AllowInsecure = Bool(config, "allow-insecure", d.AllowInsecure),
            AnnouncerMode = OneOf(config, "announcer", d.AnnouncerMode, Announcers),
            HealthKeepAlive = Bool(config, "health-keepalive", d.HealthKeepAlive),
            LogFormat = OneOf(config, "log-format", d.LogFormat, ["text", "json"]),
            LogLevel = OneOf(config, "log-level", d.LogLevel, ["debug", "information", "warning", "error"]),
        };
        var bgp = BgpFrom(config, options);
        options = options with
        {
            Vrrp = VrrpFrom(config, options),
            Bgp = bgp,
            StoreGrace = bgp is null ? null : Duration(config, "bgp-store-grace", TimeSpan.FromSeconds(120)),
        };
        DaemonSections.Check(options);
        return options;
    }

    private static readonly string[] VrrpKeys =
        ["vrrp-interface", "vrrp-router-id", "vrrp-priority", "vrrp-peer", "vrrp-preempt", "vrrp-advert-interval", "vrrp-start-window", "management-vip", "keepalived"];

    /// <summary>--announcer vrrp: the keepalived instance from the --vrrp-* flags (its files in --state-dir/keepalived).</summary>
    private static Merlin.Announcer.Vrrp.VrrpOptions? VrrpFrom(IConfiguration c, DaemonOptions o)
    {
        if (!For(c, o, "vrrp", VrrpKeys)) return null;
        var routerId = c["vrrp-router-id"] is { } id
            ? Integer(id, "vrrp-router-id")
            : throw new OptionsException("--vrrp-router-id: required with --announcer vrrp (1-255, the same on both nodes of the pair)");
        var vip = c["management-vip"] is { } m
            ? (IPAddress.TryParse(m, out var a) ? a : throw new OptionsException($"--management-vip: {Validation.Quote(m)} is not an IP address"))
            : throw new OptionsException("--management-vip: required with --announcer vrrp (the address on which the API is reachable at whichever node is MASTER)");
        var peers = Values(c, "vrrp-peer")
            .Select(p => IPAddress.TryParse(p, out var a) ? a : throw new OptionsException($"--vrrp-peer: {Validation.Quote(p)} is not an IP address")).ToList();
        var vrrp = new Merlin.Announcer.Vrrp.VrrpOptions
        {
            Interface = c["vrrp-interface"] ?? o.Interface ?? "",
            RouterId = routerId,
            Priority = c["vrrp-priority"] is { } p ? Integer(p, "vrrp-priority") : 100,
            Peers = peers,
            Preempt = Bool(c, "vrrp-preempt", false),
            ManagementVip = vip,
            AdvertInterval = Duration(c, "vrrp-advert-interval", TimeSpan.FromSeconds(1)),
            StartWindow = Duration(c, "vrrp-start-window", TimeSpan.FromSeconds(60)),
            StateDir = Path.Combine(o.StateDir, "keepalived"),
            Keepalived = c["keepalived"] is { Length: > 0 } k ? k : "keepalived",
            NetworkNamespace = o.NetworkNamespace,
        };
        return vrrp; // checked with the other sections (AnnouncerSectionValidator)
    }

    private static readonly string[] BgpKeys =
        ["bgp-asn", "bgp-router-id", "bgp-peer", "bgp-local-address", "bgp-hold-time", "bgp-store-grace", "gobgpd"];

    /// <summary>--announcer bgp: gobgpd's instance from the --bgp-* flags (its socket in --state-dir/gobgpd).</summary>
    private static Merlin.Announcer.Bgp.BgpOptions? BgpFrom(IConfiguration c, DaemonOptions o)
    {
        if (!For(c, o, "bgp", BgpKeys)) return null;
        var asn = c["bgp-asn"] is { } a
            ? (uint.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new OptionsException($"--bgp-asn: {Validation.Quote(a)} is not an AS number (1-4294967295)"))
            : throw new OptionsException("--bgp-asn: required with --announcer bgp (this node's AS; every node of a fleet may share one)");
        var routerId = c["bgp-router-id"] is { } r
            ? (IPAddress.TryParse(r, out var id) ? id : throw new OptionsException($"--bgp-router-id: {Validation.Quote(r)} is not an IPv4 address"))
            : throw new OptionsException("--bgp-router-id: required with --announcer bgp (a unique IPv4 address, usually the node's own)");
        var peers = new List<Merlin.Announcer.Bgp.BgpPeer>();
        foreach (var text in Values(c, "bgp-peer"))
            peers.Add(Merlin.Announcer.Bgp.BgpPeer.TryParse(text, out var reason) ?? throw new OptionsException($"--bgp-peer: {reason}"));
        IPAddress? local4 = null, local6 = null;
        foreach (var text in Values(c, "bgp-local-address"))
        {
            if (!IPAddress.TryParse(text, out var local)) throw new OptionsException($"--bgp-local-address: {Validation.Quote(text)} is not an IP address");
            if (local.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6)
                local6 = local6 is null ? local : throw new OptionsException("--bgp-local-address: at most one IPv6 address");
            else
                local4 = local4 is null ? local : throw new OptionsException("--bgp-local-address: at most one IPv4 address");
        }
        var bgp = new Merlin.Announcer.Bgp.BgpOptions
        {
            LocalAsn = asn,
            RouterId = routerId,
            Peers = peers,
            LocalAddress = local4,
            LocalAddress6 = local6,
            HoldTime = Duration(c, "bgp-hold-time", TimeSpan.FromSeconds(9)),
            StateDir = Path.Combine(o.StateDir, "gobgpd"),
            Gobgpd = c["gobgpd"] is { Length: > 0 } g ? g : "gobgpd",
            NetworkNamespace = o.NetworkNamespace,
        };
        return bgp; // checked with the other sections (AnnouncerSectionValidator)
    }

    /// <summary>True when the announcer is <paramref name="mode"/>; otherwise none of its flags may be given.</summary>
    private static bool For(IConfiguration c, DaemonOptions o, string mode, IEnumerable<string> keys)
    {
        if (o.AnnouncerMode == mode) return true;
        if (keys.FirstOrDefault(k => c[k] is not null) is { } stray)
            throw new OptionsException($"--{stray}: only with --announcer {mode} (the announcer is {o.AnnouncerMode})");
        return false;
    }

    private static int Integer(string text, string key) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not a whole number");

    /// <summary>A repeatable flag's values (repeats are joined with commas), trimmed, empty ones dropped.</summary>
    private static string[] Values(IConfiguration c, string key) =>
        (c[key] ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>
    /// --state-dir is a directory, or can be made one (its nearest existing ancestor is a directory). Checked
    /// here without writing anything; the daemon makes it when it first keeps state there.
    /// </summary>
    private static string StateDirectory(string path)
    {
        if (path.Trim().Length == 0) throw new OptionsException("--state-dir: empty (a directory for node-local state, e.g. /var/lib/merlin)");
        var full = Path.GetFullPath(path);
        if (File.Exists(full)) throw new OptionsException($"--state-dir: {path} is a file, not a directory");
        if (!Directory.Exists(full) && PathCheck.Makeable("--state-dir", path, full) is { Failed: true } failed) throw new OptionsException(failed.Failures!.First());
        return path;
    }

    private static string? NonEmpty(IConfiguration c, string key) => c[key] is { Length: > 0 } text ? text : null;

    private static uint Seed(string text)
    {
        try { return Merlin.Dataplane.Nftables.NftablesOptions.ParseSeed(text); }
        catch (FormatException e) { throw new OptionsException($"--hash-seed: {e.Message}"); }
    }

    private static bool Bool(IConfiguration c, string key, bool fallback)
    {
        var text = c[key];
        if (text is null) return fallback;
        return bool.TryParse(text, out var b) ? b : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not true or false");
    }

    private static IPAddress Address(IConfiguration c, string key, IPAddress fallback)
    {
        var text = c[key];
        if (text is null) return fallback;
        return IPAddress.TryParse(text, out var a) ? a : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not an IP address");
    }

    private static int PortOf(IConfiguration c, string key, int fallback)
    {
        var text = c[key];
        if (text is null) return fallback;
        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var p) && p <= 65535
            ? p : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not a port (0-65535)");
    }

    private static TimeSpan Duration(IConfiguration c, string key, TimeSpan fallback)
    {
        var text = c[key];
        if (text is null) return fallback;
        if (!Durations.TryParse(text, out var value, out var error)) throw new OptionsException($"--{key}: {error}");
        return value > TimeSpan.Zero ? value : throw new OptionsException($"--{key}: must be positive");
    }

    private static string OneOf(IConfiguration c, string key, string fallback, IReadOnlyList<string> allowed)
    {
        var text = c[key];
        if (text is null) return fallback;
        return allowed.Contains(text) ? text : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not one of {string.Join(", ", allowed)}");
    }
}

public sealed class OptionsException(string message) : Exception(message);
