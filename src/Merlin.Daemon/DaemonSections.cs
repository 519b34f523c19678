using System.Net;
using Merlin.Model;
using Merlin.Hosting;
using Microsoft.Extensions.Options;

namespace Merlin.Daemon;

// The daemon's settings by concern, each an IOptions<T> section with its rules in an IValidateOptions<T>: the rules
// that relate one setting to another or to the machine, with the messages they always had (each names its flag).
// Turning text into values (an address, a port, a duration) stays with the parsing in DaemonOptions.From.

/// <summary>Where the desired state is kept: embedded SQLite or etcd.</summary>
public sealed record StoreSection
{
    public string Backend { get; init; } = "sqlite";
    public IReadOnlyList<string> Endpoints { get; init; } = ["http://127.0.0.1:2379"];
    public string Prefix { get; init; } = "/merlin";
    public string Path { get; init; } = "/var/lib/merlin/merlin.db";
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>
    /// How long the table each API write stores keeps a moved slot's previous owner for second chance (a draining
    /// previous owner is kept until it is removed, however long): <see cref="Merlin.Api.LookupTables.DefaultWindow"/>.
    /// </summary>
    public TimeSpan SecondChanceWindow { get; init; } = Merlin.Api.LookupTables.DefaultWindow;

    /// <summary>The longest <see cref="SecondChanceWindow"/>: a record older than this is a hand-off nobody has the connection for.</summary>
    public static readonly TimeSpan MaxSecondChanceWindow = TimeSpan.FromDays(30);
}

/// <summary>The gRPC API's listeners and who may call it (docs/operations.md, "Securing the API").</summary>
public sealed record ApiSection
{
    public IPAddress ListenAddress { get; init; } = IPAddress.Loopback;
    public int Port { get; init; } = 4282;
    /// <summary>The server certificate and key, PEM.</summary>
    public string? TlsCert { get; init; }
    public string? TlsKey { get; init; }
    /// <summary>Client certificates issued by this CA (PEM) identify callers.</summary>
    public string? TlsClientCa { get; init; }
    /// <summary>Bearer tokens, one a line: <c>token role [ip…]</c>.</summary>
    public string? TokensFile { get; init; }
    /// <summary>A local Unix socket for meradm on the node; its callers are admin.</summary>
    public string? UnixSocket { get; init; }
    /// <summary>Serve the API beyond loopback without TLS, or without credentials.</summary>
    public bool AllowInsecure { get; init; }
}

/// <summary>The health port (/healthz, /readyz, /metrics, the status page) and the health checks of real servers.</summary>
public sealed record HealthSection
{
    public IPAddress ListenAddress { get; init; } = IPAddress.Loopback;
    public int Port { get; init; } = 4283;
    /// <summary>Plain HTTP health checks keep one connection per server (renewed every 22.5-30 s); false: a new connection per check.</summary>
    public bool KeepAlive { get; init; } = true;
}

/// <summary>Which kernel dataplane the daemon programs, and how.</summary>
public sealed record DataplaneSection
{
    /// <summary>none, ipvs, nftables or auto.</summary>
    public string Kind { get; init; } = "none";
    /// <summary>nftables: the interface DSR traffic arrives on and leaves by.</summary>
    public string? Interface { get; init; }
    /// <summary>nftables: the jhash seed, identical on every node of a fleet.</summary>
    public uint? HashSeed { get; init; }
    /// <summary>ipvs: own every service in the kernel's table (the Go merlin's behaviour), not only the store's.</summary>
    public bool IpvsOwnAll { get; init; }
    /// <summary>ipvs: set the IPVS sysctls instead of only reporting their drift.</summary>
    public bool ManageSysctls { get; init; }
}

/// <summary>Who holds the VIPs: static (the operator), vrrp (keepalived) or bgp (gobgpd).</summary>
public sealed record AnnouncerSection
{
    public string Mode { get; init; } = "static";
    /// <summary>--announcer vrrp: the keepalived instance, built from the --vrrp-* flags and --management-vip.</summary>
    public Merlin.Announcer.Vrrp.VrrpOptions? Vrrp { get; init; }
    /// <summary>--announcer bgp: gobgpd's instance and peers, built from the --bgp-* flags.</summary>
    public Merlin.Announcer.Bgp.BgpOptions? Bgp { get; init; }
    /// <summary>
    /// --announcer bgp: how long a node that cannot reach the store keeps announcing (and forwarding with its
    /// last state) before it withdraws its VIPs. Null: it never withdraws for that reason.
    /// </summary>
    public TimeSpan? StoreGrace { get; init; }
}

internal sealed class StoreSectionValidator : IValidateOptions<StoreSection>
{
    public ValidateOptionsResult Validate(string? name, StoreSection o)
    {
        if (o.Endpoints.Count == 0) return Fail("--store-endpoints: at least one etcd endpoint is needed");
        if (o.SecondChanceWindow <= TimeSpan.Zero || o.SecondChanceWindow > StoreSection.MaxSecondChanceWindow)
            return Fail($"--second-chance-window: {Durations.Format(o.SecondChanceWindow)} is not between 1s and {Durations.Format(StoreSection.MaxSecondChanceWindow)}");
        return o.Backend == "sqlite" ? PathCheck.StoreFile(o.Path) : ValidateOptionsResult.Success;
    }

    internal static ValidateOptionsResult Fail(string message) => ValidateOptionsResult.Fail(message);
}

/// <summary>TLS comes as a pair; beyond loopback the API needs TLS and credentials unless told --allow-insecure.</summary>
internal sealed class ApiSectionValidator : IValidateOptions<ApiSection>
{
    public ValidateOptionsResult Validate(string? name, ApiSection o)
    {
        if (o.TlsCert is not null && o.TlsKey is null) return Fail("--tls-key: required with --tls-cert");
        if (o.TlsKey is not null && o.TlsCert is null) return Fail("--tls-cert: required with --tls-key");
        if (o.TlsClientCa is not null && o.TlsCert is null)
            return Fail("--tls-client-ca: client certificates need TLS; give --tls-cert and --tls-key too");
        if (o.AllowInsecure || IPAddress.IsLoopback(o.ListenAddress)) return ValidateOptionsResult.Success;
        if (o.TlsCert is null)
            return Fail($"--listen-address: {o.ListenAddress} is beyond loopback and the API has no TLS; give --tls-cert and --tls-key " +
                        "(with --tls-client-ca or --tokens-file), or --allow-insecure to serve it in the clear");
        if (o.TlsClientCa is null && o.TokensFile is null)
            return Fail($"--listen-address: {o.ListenAddress} is beyond loopback and the API asks for no credentials, so every caller " +
                        "would be admin; give --tls-client-ca or --tokens-file, or --allow-insecure");
        return ValidateOptionsResult.Success;
    }

    private static ValidateOptionsResult Fail(string message) => ValidateOptionsResult.Fail(message);
}

/// <summary>The health port is not the API's (0, any free port, may be both).</summary>
internal sealed class HealthSectionValidator(IOptions<ApiSection> api) : IValidateOptions<HealthSection>
{
    public ValidateOptionsResult Validate(string? name, HealthSection o) =>
        o.Port == api.Value.Port && o.Port != 0 ? ValidateOptionsResult.Fail($"--health-port: {o.Port} is also the API port") : ValidateOptionsResult.Success;
}

internal sealed class DataplaneSectionValidator : IValidateOptions<DataplaneSection>
{
    public ValidateOptionsResult Validate(string? name, DataplaneSection o) =>
        o.Kind == "nftables" && o.HashSeed is null
            ? ValidateOptionsResult.Fail("--hash-seed: required with --dataplane nftables, and the same on every node (e.g. 0x5eed1234)")
            : ValidateOptionsResult.Success;
}

/// <summary>The engine's own rules (VrrpOptions.Validate, BgpOptions.Validate), each naming its flag.</summary>
internal sealed class AnnouncerSectionValidator : IValidateOptions<AnnouncerSection>
{
    public ValidateOptionsResult Validate(string? name, AnnouncerSection o)
    {
        if (o.Vrrp?.Validate() is { } vrrp) return ValidateOptionsResult.Fail($"{vrrp.Flag}: {vrrp.Reason}");
        if (o.Bgp?.Validate() is { } bgp) return ValidateOptionsResult.Fail($"{bgp.Flag}: {bgp.Reason}");
        return ValidateOptionsResult.Success;
    }
}

/// <summary>Paths the daemon will make: checked without writing anything.</summary>
internal static class PathCheck
{
    /// <summary>The SQLite file's path is not a directory, and its directory exists or can be made; opening it is the store's check.</summary>
    public static ValidateOptionsResult StoreFile(string path)
    {
        if (path.Trim().Length == 0) return ValidateOptionsResult.Fail("--store-path: empty (the SQLite database file, e.g. /var/lib/merlin/merlin.db)");
        var full = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(full))
            return ValidateOptionsResult.Fail($"--store-path: {path} is a directory; give the database file in it (e.g. {System.IO.Path.Combine(path, "merlin.db")})");
        return File.Exists(full) ? ValidateOptionsResult.Success : Makeable("--store-path", path, full);
    }

    /// <summary>A path that does not exist yet can be made: its nearest existing ancestor is a directory, not a file.</summary>
    public static ValidateOptionsResult Makeable(string flag, string path, string full)
    {
        for (var ancestor = System.IO.Path.GetDirectoryName(full); ancestor is not null; ancestor = System.IO.Path.GetDirectoryName(ancestor))
        {
            if (File.Exists(ancestor)) return ValidateOptionsResult.Fail($"{flag}: {path} cannot be made: {ancestor} is a file");
            if (Directory.Exists(ancestor)) return ValidateOptionsResult.Success;
        }
        return ValidateOptionsResult.Success;
    }
}

/// <summary>
/// The sections as IOptions: each given whole (parsed from the flags, or built by a test), checked by its validators
/// when first read and, through ValidateOnStart, before the daemon starts.
/// </summary>
public static class DaemonSections
{
    public static IServiceCollection AddDaemonSections(this IServiceCollection services, DaemonOptions options)
    {
        services.AddGivenSection(options.Store).AddSingleton<IValidateOptions<StoreSection>, StoreSectionValidator>();
        services.AddGivenSection(options.Api).AddSingleton<IValidateOptions<ApiSection>, ApiSectionValidator>();
        services.AddGivenSection(options.Health).AddSingleton<IValidateOptions<HealthSection>, HealthSectionValidator>();
        services.AddGivenSection(options.Dataplane).AddSingleton<IValidateOptions<DataplaneSection>, DataplaneSectionValidator>();
        services.AddGivenSection(options.Announcer).AddSingleton<IValidateOptions<AnnouncerSection>, AnnouncerSectionValidator>();
        return services;
    }

    /// <summary>
    /// Every section's rules, in the order an operator fixes them (the first failure is the one reported), as
    /// <see cref="OptionsException"/>: what the command line and <see cref="DaemonHost"/> both run.
    /// </summary>
    public static void Check(DaemonOptions options)
    {
        Throw(new DataplaneSectionValidator().Validate(null, options.Dataplane));
        Throw(new StoreSectionValidator().Validate(null, options.Store));
        Throw(new HealthSectionValidator(Options.Create(options.Api)).Validate(null, options.Health));
        Throw(new ApiSectionValidator().Validate(null, options.Api));
        Throw(new AnnouncerSectionValidator().Validate(null, options.Announcer));
    }

    private static void Throw(ValidateOptionsResult result)
    {
        if (result.Failed) throw new OptionsException(result.Failures!.First());
    }
}
