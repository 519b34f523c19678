using System.Net;
using Merlin.Model;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Cli.Output;

// What `list` and `status` show, independent of how: the JSON output serializes these records as
// they are (their property names are the stable script interface), the tables format them.

public sealed record ServiceList(IReadOnlyList<ServiceView> Services);

public sealed record ServiceView
{
    public required string Id { get; init; }
    /// <summary>tcp, udp or sctp.</summary>
    public required string Protocol { get; init; }
    /// <summary>ipv4 or ipv6.</summary>
    public required string Family { get; init; }
    /// <summary><c>ip:port</c> (<c>[v6]:port</c>); null for a firewall-mark service.</summary>
    public required string? Address { get; init; }
    public required string? Ip { get; init; }
    public required uint? Port { get; init; }
    /// <summary>Null unless this is a firewall-mark service.</summary>
    public required uint? Fwmark { get; init; }
    public required string Scheduler { get; init; }
    public required IReadOnlyList<string> Flags { get; init; }
    /// <summary>Seconds; 0 = not persistent.</summary>
    public required uint PersistenceTimeout { get; init; }
    /// <summary>Prefix length clients are grouped by when persistent (32 / 128 = per client address).</summary>
    public required uint PersistenceNetmask { get; init; }
    public required bool OnePacket { get; init; }
    public required IReadOnlyList<ServerView> Servers { get; init; }
    /// <summary>The kernel's counters (<c>list --stats</c>); null when not asked for or not programmed.</summary>
    public TrafficView? Stats { get; init; }
    /// <summary>An md-table service's stored table; null for other services.</summary>
    public TableView? Table { get; init; }
}

/// <summary>A stored md-table: its hash (16 hex digits, as <c>meradm status</c> shows each node's), or null with why there is none.</summary>
public sealed record TableView(string? Hash, string? Problem);

/// <summary>
/// An md-table service's table as the answering node programs it: the hash, why the stored one was not used (null when
/// it was), and the table changes programmed since the daemon started with the slots they moved.
/// </summary>
public sealed record TableStatusView(string Service, string Hash, string? Problem, ulong Changes, ulong SlotsMoved);

/// <summary>Totals since the kernel created the service or server.</summary>
public sealed record TrafficView(ulong Connections, ulong InPackets, ulong OutPackets, ulong InBytes, ulong OutBytes);

/// <summary>A real server's counters: its connections now, and totals.</summary>
public sealed record ServerStatsView(uint ActiveConnections, uint InactiveConnections, ulong Connections, ulong InPackets, ulong InBytes);

public sealed record ServerView
{
    public required string Address { get; init; }
    public required string Ip { get; init; }
    public required uint Port { get; init; }
    /// <summary>Null only if the server sent no weight.</summary>
    public required uint? Weight { get; init; }
    /// <summary>route, tunnel or masq.</summary>
    public required string Forward { get; init; }
    /// <summary>Null unless <see cref="Forward"/> is tunnel.</summary>
    public required TunnelView? Tunnel { get; init; }
    /// <summary>0 = no limit.</summary>
    public required uint UpperThreshold { get; init; }
    public required uint LowerThreshold { get; init; }
    /// <summary>Null when the server has no health check.</summary>
    public required HealthCheckView? HealthCheck { get; init; }
    /// <summary>The kernel's counters (<c>list --stats</c>); null when not asked for or not programmed.</summary>
    public ServerStatsView? Stats { get; init; }
    /// <summary>What the answering node's health checks say; null for a server without a check.</summary>
    public ServerHealthView? Health { get; init; }
    /// <summary>When a draining server is removed (its effective weight is 0 until then); null when not draining.</summary>
    public DateTimeOffset? DrainDeadline { get; init; }
    /// <summary>Whole seconds until <see cref="DrainDeadline"/> by the daemon's clock (0 once due); null when not draining.</summary>
    public long? DrainSecondsLeft { get; init; }
}

/// <summary>up, down or unknown (no verdict yet); the last check's result; since when (null while unknown).</summary>
public sealed record ServerHealthView(string Verdict, string Detail, DateTimeOffset? Since);

public sealed record TunnelView(string Type, uint? Port, IReadOnlyList<string> Flags);

public sealed record HealthCheckView
{
    public required string Endpoint { get; init; }
    public required double PeriodSeconds { get; init; }
    public required double TimeoutSeconds { get; init; }
    public required uint UpThreshold { get; init; }
    public required uint DownThreshold { get; init; }
}

public sealed record StatusView
{
    public required string Version { get; init; }
    public required bool Ready { get; init; }
    public required string StoreBackend { get; init; }
    public required bool StoreReachable { get; init; }
    public required string Dataplane { get; init; }
    /// <summary>Seconds since the last reconcile pass; null if there has been none.</summary>
    public required double? SinceLastReconcileSeconds { get; init; }
    public required ulong ReconcilePasses { get; init; }
    public required ulong ReconcileErrors { get; init; }
    public required ulong OperationsApplied { get; init; }
    /// <summary>Null when there is no error to report.</summary>
    public required string? LastError { get; init; }
    public required uint Services { get; init; }
    public required uint Servers { get; init; }
    /// <summary>Servers with a health check, by the answering node's verdict.</summary>
    public required uint ServersUp { get; init; }
    public required uint ServersDown { get; init; }
    public required uint ServersUnknown { get; init; }
    public required IReadOnlyList<SysctlView> Sysctls { get; init; }
    public required IReadOnlyList<string> Warnings { get; init; }
    /// <summary>Who holds the VIPs: static, vrrp or bgp (empty from a daemon that predates announcers).</summary>
    public string Announcer { get; init; } = "";
    /// <summary>VRRP state (MASTER, BACKUP, FAULT, …); null where roles do not apply.</summary>
    public string? AnnouncerState { get; init; }
    public bool AnnouncerHealthy { get; init; }
    public string? AnnouncerDetail { get; init; }
    /// <summary>Seconds in the current announcer state, by the daemon's clock at the call; null if unknown.</summary>
    public double? AnnouncerStateSeconds { get; init; }
    public ulong AnnouncerRestarts { get; init; }
    public IReadOnlyList<VipView> Vips { get; init; } = [];
    /// <summary>Drained with <c>meradm node drain</c>: the node announces no VIP.</summary>
    public bool NodeDrained { get; init; }
    /// <summary>The store's compatibility mode: go-merlin, or empty when off (or from a daemon that predates it).</summary>
    public string Compatibility { get; init; } = "";
    /// <summary>
    /// Records of the store last written by a Go merlin or a Merlin from before merlin_digest; null from a daemon
    /// that does not count them, or has not read the store yet.
    /// </summary>
    public uint? ServicesNotByMerlin { get; init; }
    public uint? ServersNotByMerlin { get; init; }
    /// <summary>Server keys whose service does not exist (etcd: left by a Go merlin's service del).</summary>
    public uint OrphanedServers { get; init; }
    /// <summary>md-table services' tables as this node programs them (compare the hashes between nodes).</summary>
    public IReadOnlyList<TableStatusView> Tables { get; init; } = [];
}

/// <summary>A VIP the announcer is responsible for, and whether this node holds (VRRP) or announces (BGP) it.</summary>
public sealed record VipView(string Address, bool Announced, bool Management);

/// <summary>A kernel setting the dataplane depends on; <see cref="Have"/> is null when it could not be read.</summary>
public sealed record SysctlView(string Name, string Want, string? Have, bool Managed, bool Drifted, string Why);

public static class Views
{
    /// <summary>Services sorted by id, each one's servers by address, so output is stable between runs.</summary>
    public static ServiceList From(ListResponse response) => From(response, TimeProvider.System.GetUtcNow());

    /// <param name="clock">The time to count a drain's time left from when the daemon did not send its own.</param>
    public static ServiceList From(ListResponse response, DateTimeOffset clock)
    {
        var now = response.Now is { } n ? n.ToDateTimeOffset() : clock;
        return new(response.Items
            .Select(item => WithDrain(WithHealth(ToView(item), item), item, now))
            .OrderBy(s => s.Id, StringComparer.Ordinal)
            .ToList());
    }

    private static ServiceView WithDrain(ServiceView view, ListResponse.Types.Item item, DateTimeOffset now)
    {
        var deadlines = item.Servers.Where(s => s.DrainDeadline is not null && s.Key is not null)
            .ToDictionary(s => FormatEndpoint(s.Key.Ip, s.Key.Port), s => s.DrainDeadline.ToDateTimeOffset());
        if (deadlines.Count == 0) return view;
        return view with
        {
            Servers = view.Servers.Select(s => deadlines.TryGetValue(s.Address, out var d)
                ? s with { DrainDeadline = d, DrainSecondsLeft = Math.Max(0, (long)Math.Ceiling((d - now).TotalSeconds)) }
                : s).ToList(),
        };
    }

    private static ServiceView WithHealth(ServiceView view, ListResponse.Types.Item item)
    {
        if (item.Health.Count == 0) return view;
        var byServer = item.Health.Where(h => h.Key is not null).ToDictionary(h => FormatEndpoint(h.Key.Ip, h.Key.Port));
        return view with
        {
            Servers = view.Servers.Select(s => byServer.TryGetValue(s.Address, out var h)
                ? s with { Health = new ServerHealthView(h.Verdict, h.Detail, h.Since?.ToDateTimeOffset()) }
                : s).ToList(),
        };
    }

    private static ServiceView ToView(ListResponse.Types.Item item)
    {
        var service = item.Service ?? new Wire.VirtualService();
        var key = service.Key ?? new Wire.VirtualService.Types.Key();
        var config = service.Config ?? new Wire.VirtualService.Types.Config();
        var isFwmark = key.Fwmark != 0;
        var v6 = isFwmark ? key.Family == AddressFamily.Inet6 : IsV6(key.Ip);
        return new ServiceView
        {
            Id = service.Id,
            Protocol = Name(key.Protocol == Wire.Protocol.UnsetProtocol && isFwmark ? Wire.Protocol.Tcp : key.Protocol),
            Family = v6 ? "ipv6" : "ipv4",
            Address = isFwmark ? null : FormatEndpoint(key.Ip, key.Port),
            Ip = isFwmark ? null : key.Ip,
            Port = isFwmark ? null : key.Port,
            Fwmark = isFwmark ? key.Fwmark : null,
            Scheduler = config.Scheduler,
            Flags = FlagNames(config.Scheduler, config.Flags),
            PersistenceTimeout = config.PersistenceTimeout,
            PersistenceNetmask = config.HasPersistenceNetmask ? config.PersistenceNetmask : (v6 ? 128u : 32u),
            OnePacket = config.OnePacket,
            Table = item.TableHash.Length == 0 && item.TableProblem.Length == 0 ? null
                : new TableView(item.TableHash.Length == 0 ? null : item.TableHash, item.TableProblem.Length == 0 ? null : item.TableProblem),
            Servers = item.Servers
                .OrderBy(s => AddressSortKey(s.Key?.Ip ?? ""), StringComparer.Ordinal)
                .ThenBy(s => s.Key?.Port ?? 0)
                .Select(ToView)
                .ToList(),
        };
    }

    private static ServerView ToView(Wire.RealServer server)
    {
        var key = server.Key ?? new Wire.RealServer.Types.Key();
        var config = server.Config ?? new Wire.RealServer.Types.Config();
        var health = server.HealthCheck;
        return new ServerView
        {
            Address = FormatEndpoint(key.Ip, key.Port),
            Ip = key.Ip,
            Port = key.Port,
            Weight = config.Weight,
            Forward = Name(config.Forward),
            Tunnel = config.Forward == Wire.ForwardMethod.Tunnel
                ? new TunnelView(
                    Name(config.TunnelType),
                    config.HasTunnelPort && config.TunnelPort != 0 ? config.TunnelPort : null,
                    config.TunnelFlags.ToList())
                : null,
            UpperThreshold = config.UpperThreshold,
            LowerThreshold = config.LowerThreshold,
            HealthCheck = string.IsNullOrEmpty(health?.Endpoint)
                ? null
                : new HealthCheckView
                {
                    Endpoint = health.Endpoint,
                    PeriodSeconds = health.Period?.ToTimeSpan().TotalSeconds ?? 0,
                    TimeoutSeconds = health.Timeout?.ToTimeSpan().TotalSeconds ?? 0,
                    UpThreshold = health.UpThreshold,
                    DownThreshold = health.DownThreshold,
                },
        };
    }

    public static StatusView From(StatusResponse status) => new()
    {
        Version = status.Version,
        Ready = status.Ready,
        StoreBackend = status.StoreBackend,
        StoreReachable = status.StoreReachable,
        Dataplane = status.Dataplane,
        SinceLastReconcileSeconds = status.SinceLastReconcile?.ToTimeSpan().TotalSeconds,
        ReconcilePasses = status.ReconcilePasses,
        ReconcileErrors = status.ReconcileErrors,
        OperationsApplied = status.OperationsApplied,
        LastError = string.IsNullOrEmpty(status.LastError) ? null : status.LastError,
        Services = status.Services,
        Servers = status.Servers,
        ServersUp = status.ServersUp,
        ServersDown = status.ServersDown,
        ServersUnknown = status.ServersUnknown,
        Sysctls = status.Sysctls
            .Select(x => new SysctlView(x.Name, x.Want, x.Have.Length == 0 ? null : x.Have, x.Managed, x.Have != x.Want, x.Why))
            .ToList(),
        Warnings = status.Warnings.ToList(),
        Announcer = status.Announcer,
        AnnouncerState = status.AnnouncerState.Length == 0 ? null : status.AnnouncerState,
        AnnouncerHealthy = status.AnnouncerHealthy,
        AnnouncerDetail = status.AnnouncerDetail.Length == 0 ? null : status.AnnouncerDetail,
        AnnouncerStateSeconds = status.AnnouncerSince is { } since ? Math.Max(0, (DateTimeOffset.UtcNow - since.ToDateTimeOffset()).TotalSeconds) : null,
        AnnouncerRestarts = status.AnnouncerRestarts,
        NodeDrained = status.NodeDrained,
        Compatibility = status.Compatibility,
        ServicesNotByMerlin = status.HasServicesNotByMerlin ? status.ServicesNotByMerlin : null,
        ServersNotByMerlin = status.HasServersNotByMerlin ? status.ServersNotByMerlin : null,
        OrphanedServers = status.OrphanedServers,
        Vips = status.Vips.Select(v => new VipView(v.Address, v.Announced, v.Management)).ToList(),
        Tables = status.Tables.Select(t => new TableStatusView(t.Service, t.Hash, t.Problem.Length == 0 ? null : t.Problem, t.Changes, t.SlotsMoved)).ToList(),
    };

    /// <summary>Adds the kernel's counters to a list; services and servers the dataplane does not hold keep null.</summary>
    public static ServiceList WithStats(ServiceList list, CountersResponse counters)
    {
        var byService = counters.Services.ToDictionary(s => ServiceIdentity(s.Key ?? new()), s => s);
        return new ServiceList(list.Services.Select(service =>
        {
            var identity = service.Fwmark is { } mark ? $"fwmark:{mark}:{service.Family}" : $"{service.Protocol}:{Normal(service.Ip ?? "")}:{service.Port}";
            if (!byService.TryGetValue(identity, out var c)) return service;
            var servers = c.Servers.ToDictionary(r => $"{Normal(r.Key?.Ip ?? "")}:{r.Key?.Port}", r => r);
            var t = c.Totals ?? new Traffic();
            return service with
            {
                Stats = new TrafficView(t.Connections, t.InPackets, t.OutPackets, t.InBytes, t.OutBytes),
                Servers = service.Servers.Select(r =>
                    servers.TryGetValue($"{Normal(r.Ip)}:{r.Port}", out var rc)
                        ? r with { Stats = new ServerStatsView(rc.ActiveConnections, rc.InactiveConnections, rc.Totals?.Connections ?? 0, rc.Totals?.InPackets ?? 0, rc.Totals?.InBytes ?? 0) }
                        : r).ToList(),
            };
        }).ToList());
    }

    private static string ServiceIdentity(Wire.VirtualService.Types.Key key) => key.Fwmark != 0
        ? $"fwmark:{key.Fwmark}:{(key.Family == AddressFamily.Inet6 ? "ipv6" : "ipv4")}"
        : $"{Name(key.Protocol == Wire.Protocol.UnsetProtocol ? Wire.Protocol.Tcp : key.Protocol)}:{Normal(key.Ip)}:{key.Port}";

    private static string Normal(string ip) => IPAddress.TryParse(ip, out var a) ? a.ToString() : ip;

    /// <summary>
    /// The scheduler's own flag names (sh-port, mh-fallback). The daemon stores and returns the original
    /// merlin's flag-1/2/3 for compatibility; those are shown as-is only where they have no name.
    /// </summary>
    public static IReadOnlyList<string> FlagNames(string scheduler, IEnumerable<string> flags)
    {
        var list = flags.Where(f => f.Length != 0).ToList();
        return Schedulers.ParseFlags(scheduler, list, "flags", out var parsed) is null
            ? Schedulers.FlagNames(scheduler, parsed)
            : list;
    }

    /// <summary><c>ip:port</c>, IPv6 in brackets; an address that does not parse is shown as it came.</summary>
    public static string FormatEndpoint(string ip, uint port)
    {
        if (Endpoints.TryParseAddress(ip, out var address) && port <= ushort.MaxValue) return Endpoints.Format(address, (ushort)port);
        return ip.Contains(':') ? $"[{ip}]:{port}" : $"{ip}:{port}";
    }

    /// <summary>Lower-case enum names; a value this meradm does not know is shown as its number.</summary>
    private static string Name<T>(T value) where T : struct, Enum
    {
        var name = value.ToString();
        if (name.Length > 0 && (char.IsAsciiDigit(name[0]) || name[0] == '-')) return name;
        return name switch
        {
            "UnsetProtocol" or "UnsetForwardMethod" => "unset",
            _ => name.ToLowerInvariant(),
        };
    }

    private static bool IsV6(string ip) =>
        IPAddress.TryParse(ip, out var address) && address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6;

    // IPv4 before IPv6, then by address bytes: 10.0.0.9 sorts before 10.0.0.10.
    private static string AddressSortKey(string ip) =>
        IPAddress.TryParse(ip, out var address)
            ? (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "6" : "4") + Convert.ToHexString(address.GetAddressBytes())
            : "9" + ip;
}
