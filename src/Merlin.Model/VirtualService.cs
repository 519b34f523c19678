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

    /// <summary>
    /// The service's stored minimal-disruption table (md-table services only), handed only to a dataplane that
    /// programs stored tables; null otherwise. Part of the configuration so a new table is a change to plan.
    /// </summary>
    public StoredTable? Table { get; init; }
}

/// <summary>A stored lookup table as the store holds it (its encoding); equal when the bytes are.</summary>
public sealed class StoredTable(byte[] bytes) : IEquatable<StoredTable>
{
    public byte[] Bytes { get; } = bytes ?? throw new ArgumentNullException(nameof(bytes));

    public bool Equals(StoredTable? other) => other is not null && (ReferenceEquals(this, other) || Bytes.AsSpan().SequenceEqual(other.Bytes));

    public override bool Equals(object? obj) => Equals(obj as StoredTable);

    public override int GetHashCode() => Bytes.Length;
}

public sealed record VirtualService(string Id, ServiceKey Key, ServiceConfig Config);
