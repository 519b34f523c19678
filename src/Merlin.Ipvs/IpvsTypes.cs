using Merlin.Model;

namespace Merlin.Ipvs;

/// <summary>
/// A virtual service as the kernel holds it. Equality compares what identifies and configures it and
/// ignores <see cref="Stats"/>, so "does the kernel already match?" is a plain comparison.
/// </summary>
public sealed record IpvsService(ServiceKey Key, ServiceConfig Config)
{
    /// <summary>Persistence engine (IPVS_SVC_ATTR_PE_NAME, e.g. "sip"); Merlin never sets one.</summary>
    public string? PersistenceEngine { get; init; }

    /// <summary>Counters and rates; not part of equality.</summary>
    public IpvsStats Stats { get; init; }

    public bool Equals(IpvsService? other) =>
        other is not null && Key.Equals(other.Key) && Config.Equals(other.Config) && PersistenceEngine == other.PersistenceEngine;

    public override int GetHashCode() => HashCode.Combine(Key, Config, PersistenceEngine);

    public override string ToString() => $"{Key} {Config.Scheduler}";
}

/// <summary>
/// A real server (destination) as the kernel holds it. Equality compares address, port and configuration
/// and ignores the connection counters and <see cref="Stats"/>.
/// </summary>
public sealed record IpvsDestination(RealServerKey Key, RealServerConfig Config)
{
    public uint ActiveConnections { get; init; }
    public uint InactiveConnections { get; init; }
    public uint PersistentConnections { get; init; }
    public IpvsStats Stats { get; init; }

    public bool Equals(IpvsDestination? other) => other is not null && Key.Equals(other.Key) && Config.Equals(other.Config);

    public override int GetHashCode() => HashCode.Combine(Key, Config);

    public override string ToString() => $"{Key} {Config.Forward} weight {Config.Weight}";
}

/// <summary>
/// Counters (totals since creation or the last zeroing) and rates (per second, estimated by the kernel).
/// From IPVS_*_ATTR_STATS64 when the kernel sends it (4.1+), else from the older STATS whose packet
/// and connection counters are 32-bit.
/// </summary>
public readonly record struct IpvsStats(
    ulong Connections, ulong InPackets, ulong OutPackets, ulong InBytes, ulong OutBytes,
    ulong ConnectionRate, ulong InPacketRate, ulong OutPacketRate, ulong InByteRate, ulong OutByteRate);

/// <summary>IPVS_CMD_GET_INFO: the IPVS version (0x010201 is 1.2.1) and the connection hash table's size.</summary>
public sealed record IpvsInfo(uint Version, uint ConnectionTableSize)
{
    public string VersionText => $"{(Version >> 16) & 0xFF}.{(Version >> 8) & 0xFF}.{Version & 0xFF}";
}

/// <summary>
/// Connection timeouts (IPVS_CMD_GET_CONFIG / SET_CONFIG), in whole seconds. When setting, a zero leaves that
/// timeout as it is, as <c>ipvsadm --set 0 0 0</c> does.
/// </summary>
public sealed record IpvsTimeouts(TimeSpan Tcp, TimeSpan TcpFin, TimeSpan Udp);
