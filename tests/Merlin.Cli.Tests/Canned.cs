using Google.Protobuf.WellKnownTypes;
using Merlin.Contracts;

namespace Merlin.Cli.Tests;

/// <summary>A ListResponse with one of each: IPv4 with flags and persistence, IPv6, fwmark; DSR, tunnel, NAT servers.</summary>
public static class Canned
{
    /// <summary>Counters for "web" and its first server only, as a dataplane that programmed just those would answer.</summary>
    public static CountersResponse Counters() => new()
    {
        Dataplane = "ipvs",
        Services =
        {
            new CountersResponse.Types.Service
            {
                Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp },
                Totals = new() { Connections = 1200, InPackets = 98000, InBytes = 7_345_678 },
                Servers =
                {
                    new CountersResponse.Types.Server
                    {
                        Key = new() { Ip = "198.18.1.9", Port = 80 },
                        ActiveConnections = 3, InactiveConnections = 17,
                        Totals = new() { Connections = 1200, InPackets = 98000, InBytes = 7_345_678 },
                    },
                },
            },
        },
    };

    public static ListResponse List() => new()
    {
        Items =
        {
            // Deliberately out of order: meradm sorts services by id and servers by address.
            new ListResponse.Types.Item
            {
                Service = new()
                {
                    Id = "web6",
                    Key = new() { Ip = "2001:db8::1", Port = 443, Protocol = Protocol.Tcp },
                    Config = new() { Scheduler = "mh", Flags = { "flag-2" } }, // as the daemon stores it: the original's alias
                },
                Servers =
                {
                    new RealServer
                    {
                        ServiceID = "web6",
                        Key = new() { Ip = "2001:db8::10", Port = 443 },
                        Config = new() { Weight = 1, Forward = ForwardMethod.Masq },
                        HealthCheck = new(),
                    },
                },
            },
            new ListResponse.Types.Item
            {
                Service = new()
                {
                    Id = "web",
                    Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp },
                    Config = new()
                    {
                        Scheduler = "sh", Flags = { "sh-port", "sh-fallback" },
                        PersistenceTimeout = 300, PersistenceNetmask = 24,
                    },
                },
                Servers =
                {
                    new RealServer
                    {
                        ServiceID = "web",
                        Key = new() { Ip = "198.18.1.10", Port = 80 },
                        Config = new()
                        {
                            Weight = 0, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080,
                            TunnelFlags = { "csum" }, UpperThreshold = 1000, LowerThreshold = 800,
                        },
                    },
                    new RealServer
                    {
                        ServiceID = "web",
                        Key = new() { Ip = "198.18.1.9", Port = 80 },
                        Config = new() { Weight = 100, Forward = ForwardMethod.Route },
                        HealthCheck = new()
                        {
                            Endpoint = "http://:8080/health",
                            Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(10)),
                            Timeout = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(1500)),
                            UpThreshold = 2,
                            DownThreshold = 1,
                        },
                    },
                },
            },
            new ListResponse.Types.Item
            {
                Service = new()
                {
                    Id = "dns-mark",
                    Key = new() { Fwmark = 7, Family = AddressFamily.Inet6, Protocol = Protocol.Udp },
                    Config = new() { Scheduler = "rr", OnePacket = true },
                },
            },
        },
    };

    public static StatusResponse Status() => new()
    {
        Version = "0.1.0",
        StoreBackend = "sqlite",
        StoreReachable = true,
        Dataplane = "none",
        SinceLastReconcile = Duration.FromTimeSpan(TimeSpan.FromSeconds(3.2)),
        ReconcilePasses = 120,
        ReconcileErrors = 2,
        OperationsApplied = 42,
        LastError = "",
        Services = 3,
        Servers = 3,
        Ready = true,
    };
}
