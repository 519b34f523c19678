using Google.Protobuf.WellKnownTypes;
using Merlin.Contracts;

namespace Merlin.Store.Tests;

/// <summary>Wire records as a client of the original merlin would send them.</summary>
internal static class Records
{
    public static VirtualService Service(string id, string ip = "10.0.0.1", uint port = 80, Protocol protocol = Protocol.Tcp, string scheduler = "rr") => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Ip = ip, Port = port, Protocol = protocol },
        Config = new VirtualService.Types.Config { Scheduler = scheduler },
    };

    public static VirtualService FwmarkService(string id, uint mark) => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Fwmark = mark, Family = AddressFamily.Inet },
        Config = new VirtualService.Types.Config { Scheduler = "wrr" },
    };

    public static RealServer Server(string serviceId, string ip, uint port = 8080, uint weight = 1) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = port },
        Config = new RealServer.Types.Config { Weight = weight, Forward = ForwardMethod.Route },
    };

    /// <summary>A server using every field, to prove records round-trip byte for byte.</summary>
    public static RealServer FullServer(string serviceId, string ip, uint port) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = port },
        Config = new RealServer.Types.Config
        {
            Weight = 0,
            Forward = ForwardMethod.Tunnel,
            TunnelType = TunnelType.Gue,
            TunnelPort = 6080,
            TunnelFlags = { "csum" },
            UpperThreshold = 1000,
            LowerThreshold = 10,
        },
        HealthCheck = new RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health",
            Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(5)),
            Timeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
            UpThreshold = 2,
            DownThreshold = 3,
        },
    };
}
