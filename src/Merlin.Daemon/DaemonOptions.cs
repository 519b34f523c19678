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
    public IPAddress ListenAddress { get; init; } = IPAddress.Loopback;
    public int Port { get; init; } = 4282;
    public IPAddress HealthListenAddress { get; init; } = IPAddress.Loopback;
    public int HealthPort { get; init; } = 4283;
    public string StoreBackend { get; init; } = "sqlite";
    public IReadOnlyList<string> StoreEndpoints { get; init; } = ["http://127.0.0.1:2379"];
    public string StorePrefix { get; init; } = "/merlin";
    public string StorePath { get; init; } = "/var/lib/merlin/merlin.db";
    public TimeSpan StoreTimeout { get; init; } = TimeSpan.FromSeconds(5);
    public TimeSpan SyncPeriod { get; init; } = TimeSpan.FromSeconds(30);
    public string Dataplane { get; init; } = "none";
    /// <summary>nftables: the interface DSR traffic arrives on and leaves by.</summary>
    public string? Interface { get; init; }
    /// <summary>nftables: the jhash seed, identical on every node of a fleet.</summary>
    public uint? HashSeed { get; init; }
    /// <summary>ipvs: own every service in the kernel's table (the Go merlin's behaviour), not only the store's.</summary>
    public bool IpvsOwnAll { get; init; }
    /// <summary>ipvs: set the IPVS sysctls instead of only reporting their drift.</summary>
    public bool ManageSysctls { get; init; }
    /// <summary>A named network namespace whose dataplane the daemon programs (default: its own).</summary>
    public string? NetworkNamespace { get; init; }
    /// <summary>Where the daemon keeps node-local state (which IPVS services it created).</summary>
    public string StateDir { get; init; } = "/var/lib/merlin";
    /// <summary>API security (docs/operations.md, "Securing the API"): the server certificate and key, PEM.</summary>
    public string? TlsCert { get; init; }
    public string? TlsKey { get; init; }
    /// <summary>Client certificates issued by this CA (PEM) identify callers; see ClientCertificateAuthority.</summary>
    public string? TlsClientCa { get; init; }
    /// <summary>Bearer tokens, one a line: <c>token role [ip…]</c>.</summary>
    public string? TokensFile { get; init; }
    /// <summary>A local Unix socket for meradm on the node; its callers are admin.</summary>
    public string? UnixSocket { get; init; }
    /// <summary>Serve the API beyond loopback without TLS, or without credentials.</summary>
    public bool AllowInsecure { get; init; }
    /// <summary>Who holds the VIPs: static (the operator) or vrrp (keepalived, <see cref="Vrrp"/>).</summary>
    public string Announcer { get; init; } = "static";
    /// <summary>--announcer vrrp: the keepalived instance, built and checked from the --vrrp-* flags and --management-vip.</summary>
    public Merlin.Announcer.Vrrp.VrrpOptions? Vrrp { get; init; }
    /// <summary>--announcer bgp: gobgpd's instance and peers, built and checked from the --bgp-* flags.</summary>
    public Merlin.Announcer.Bgp.BgpOptions? Bgp { get; init; }
    /// <summary>
    /// --announcer bgp: how long a node that cannot reach the store keeps announcing (and forwarding with its
    /// last state) before it withdraws its VIPs. Null: it never withdraws for that reason.
    /// </summary>
    public TimeSpan? StoreGrace { get; init; }
    /// <summary>Plain HTTP health checks keep one connection per server (renewed every 22.5-30 s); false: a new connection per check.</summary>
    public bool HealthKeepAlive { get; init; } = true;
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
            SyncPeriod = Duration(config, "reconcile-sync-period", d.SyncPeriod),
            Dataplane = OneOf(config, "dataplane", d.Dataplane, Dataplanes),
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
            Announcer = OneOf(config, "announcer", d.Announcer, Announcers),
            HealthKeepAlive = Bool(config, "health-keepalive", d.HealthKeepAlive),
            LogFormat = OneOf(config, "log-format", d.LogFormat, ["text", "json"]),
            LogLevel = OneOf(config, "log-level", d.LogLevel, ["debug", "information", "warning", "error"]),
        };
        if (options.Dataplane == "nftables" && options.HashSeed is null)
            throw new OptionsException("--hash-seed: required with --dataplane nftables, and the same on every node (e.g. 0x5eed1234)");
        if (options.StoreEndpoints.Count == 0) throw new OptionsException("--store-endpoints: at least one etcd endpoint is needed");
        if (options.StoreBackend == "sqlite") CheckStorePath(options.StorePath);
        if (options.Port == options.HealthPort && options.Port != 0) throw new OptionsException($"--health-port: {options.HealthPort} is also the API port");
        CheckApiSecurity(options);
        var bgp = BgpFrom(config, options);
        return options with
        {
            Vrrp = VrrpFrom(config, options),
            Bgp = bgp,
            StoreGrace = bgp is null ? null : Duration(config, "bgp-store-grace", TimeSpan.FromSeconds(120)),
        };
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
        if (vrrp.Validate() is { } error) throw new OptionsException($"{error.Flag}: {error.Reason}");
        return vrrp;
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
        if (bgp.Validate() is { } error) throw new OptionsException($"{error.Flag}: {error.Reason}");
        return bgp;
    }

    /// <summary>True when the announcer is <paramref name="mode"/>; otherwise none of its flags may be given.</summary>
    private static bool For(IConfiguration c, DaemonOptions o, string mode, IEnumerable<string> keys)
    {
        if (o.Announcer == mode) return true;
        if (keys.FirstOrDefault(k => c[k] is not null) is { } stray)
            throw new OptionsException($"--{stray}: only with --announcer {mode} (the announcer is {o.Announcer})");
        return false;
    }

    private static int Integer(string text, string key) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : throw new OptionsException($"--{key}: {Validation.Quote(text)} is not a whole number");

    /// <summary>TLS comes as a pair; beyond loopback the API needs TLS and credentials unless told --allow-insecure.</summary>
    private static void CheckApiSecurity(DaemonOptions o)
    {
        if (o.TlsCert is not null && o.TlsKey is null) throw new OptionsException("--tls-key: required with --tls-cert");
        if (o.TlsKey is not null && o.TlsCert is null) throw new OptionsException("--tls-cert: required with --tls-key");
        if (o.TlsClientCa is not null && o.TlsCert is null)
            throw new OptionsException("--tls-client-ca: client certificates need TLS; give --tls-cert and --tls-key too");
        if (o.AllowInsecure || IPAddress.IsLoopback(o.ListenAddress)) return;
        if (o.TlsCert is null)
            throw new OptionsException($"--listen-address: {o.ListenAddress} is beyond loopback and the API has no TLS; give --tls-cert and --tls-key " +
                                       "(with --tls-client-ca or --tokens-file), or --allow-insecure to serve it in the clear");
        if (o.TlsClientCa is null && o.TokensFile is null)
            throw new OptionsException($"--listen-address: {o.ListenAddress} is beyond loopback and the API asks for no credentials, so every caller " +
                                       "would be admin; give --tls-client-ca or --tokens-file, or --allow-insecure");
    }

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
        if (!Directory.Exists(full)) CheckMakeable("--state-dir", path, full);
        return path;
    }

    /// <summary>The SQLite file's path is not a directory, and its directory exists or can be made; opening it is the store's check.</summary>
    private static void CheckStorePath(string path)
    {
        if (path.Trim().Length == 0) throw new OptionsException("--store-path: empty (the SQLite database file, e.g. /var/lib/merlin/merlin.db)");
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new OptionsException($"--store-path: {path} is a directory; give the database file in it (e.g. {Path.Combine(path, "merlin.db")})");
        if (!File.Exists(full)) CheckMakeable("--store-path", path, full);
    }

    /// <summary>A path that does not exist yet can be made: its nearest existing ancestor is a directory, not a file.</summary>
    private static void CheckMakeable(string flag, string path, string full)
    {
        for (var ancestor = Path.GetDirectoryName(full); ancestor is not null; ancestor = Path.GetDirectoryName(ancestor))
        {
            if (File.Exists(ancestor)) throw new OptionsException($"{flag}: {path} cannot be made: {ancestor} is a file");
            if (Directory.Exists(ancestor)) return;
        }
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
