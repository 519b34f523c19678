using System.Net;

namespace Merlin.Model;

public readonly record struct RealServerKey(IPAddress Address, ushort Port) : IComparable<RealServerKey>
{
    public override string ToString() => Endpoints.Format(Address, Port);

    public int CompareTo(RealServerKey other)
    {
        var c = AddressOrder.Compare(Address, other.Address);
        return c != 0 ? c : Port.CompareTo(other.Port);
    }
}

public sealed record RealServerConfig
{
    public uint Weight { get; init; }
    public ForwardMethod Forward { get; init; } = ForwardMethod.Route;
    public TunnelType TunnelType { get; init; }
    /// <summary>Destination UDP port of GUE encapsulation; 0 otherwise.</summary>
    public ushort TunnelPort { get; init; }
    public TunnelFlags TunnelFlags { get; init; }
    /// <summary>Connection thresholds; 0 means no limit.</summary>
    public uint UpperThreshold { get; init; }
    public uint LowerThreshold { get; init; }
}

public sealed record HealthCheck
{
    public static readonly HealthCheck None = new();

    /// <summary>Null means no check: the server is always considered up.</summary>
    public Uri? Endpoint { get; init; }
    public TimeSpan Period { get; init; }
    public TimeSpan Timeout { get; init; }
    public uint UpThreshold { get; init; }
    public uint DownThreshold { get; init; }
}

public sealed record RealServer(string ServiceId, RealServerKey Key, RealServerConfig Config, HealthCheck HealthCheck)
{
    /// <summary>
    /// Set while the server drains (only the DrainServer call sets it): its effective weight is 0, and it is
    /// removed once this time has passed. <see cref="Config"/> keeps the configured weight, which an undrain restores.
    /// </summary>
    public DateTimeOffset? DrainDeadline { get; init; }
}

/// <summary>IPv4 before IPv6, then by address bytes; allocation-free.</summary>
public static class AddressOrder
{
    public static int Compare(IPAddress a, IPAddress b)
    {
        Span<byte> x = stackalloc byte[16];
        Span<byte> y = stackalloc byte[16];
        a.TryWriteBytes(x, out var lx);
        b.TryWriteBytes(y, out var ly);
        var c = lx.CompareTo(ly);
        return c != 0 ? c : x[..lx].SequenceCompareTo(y[..ly]);
    }
}
