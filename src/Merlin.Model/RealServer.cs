using System.Net;

namespace Merlin.Model;

public readonly record struct RealServerKey(IPAddress Address, ushort Port) : IComparable<RealServerKey>
{
    public override string ToString() => Endpoints.Format(Address, Port);

    public int CompareTo(RealServerKey other)
    {
        var a = Address.GetAddressBytes();
        var b = other.Address.GetAddressBytes();
        var c = a.Length.CompareTo(b.Length);
        if (c != 0) return c;
        c = a.AsSpan().SequenceCompareTo(b);
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

public sealed record RealServer(string ServiceId, RealServerKey Key, RealServerConfig Config, HealthCheck HealthCheck);
