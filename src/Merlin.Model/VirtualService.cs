using System.Net;
using System.Net.Sockets;

namespace Merlin.Model;

/// <summary>
/// What identifies a virtual service in the kernel: address + port + protocol, or a firewall mark.
/// A fwmark service has no address; its family still matters to IPVS.
/// </summary>
public readonly record struct ServiceKey
{
    public IPAddress? Address { get; init; }
    public ushort Port { get; init; }
    public Protocol Protocol { get; init; }
    public uint FirewallMark { get; init; }
    public IpFamily Family { get; init; }

    public static ServiceKey ForAddress(IPAddress address, ushort port, Protocol protocol) => new()
    {
        Address = address, Port = port, Protocol = protocol,
        Family = address.AddressFamily == AddressFamily.InterNetworkV6 ? IpFamily.V6 : IpFamily.V4,
    };

    public static ServiceKey ForFirewallMark(uint mark, IpFamily family, Protocol protocol = Protocol.Tcp) =>
        new() { FirewallMark = mark, Family = family, Protocol = protocol };

    public bool IsFirewallMark => FirewallMark != 0;

    public override string ToString() => IsFirewallMark
        ? $"fwmark:{FirewallMark}/{(Family == IpFamily.V6 ? "ipv6" : "ipv4")}"
        : $"{Protocol.ToString().ToLowerInvariant()}:{Endpoints.Format(Address!, Port)}";
}

public sealed record ServiceConfig
{
    public required string Scheduler { get; init; }
    public SchedulerFlags Flags { get; init; }
    /// <summary>Persistence timeout in seconds; 0 means not persistent.</summary>
    public uint PersistenceTimeout { get; init; }
    /// <summary>Persistence granularity as a prefix length (32/128 = per client address).</summary>
    public byte PersistenceNetmask { get; init; }
    public bool OnePacket { get; init; }
}

public sealed record VirtualService(string Id, ServiceKey Key, ServiceConfig Config);
