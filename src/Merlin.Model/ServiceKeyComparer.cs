namespace Merlin.Model;

/// <summary>A total order on service keys, so plans and dataplane audits are deterministic.</summary>
public sealed class ServiceKeyComparer : IComparer<ServiceKey>
{
    public static readonly ServiceKeyComparer Instance = new();

    public int Compare(ServiceKey x, ServiceKey y)
    {
        var c = x.FirewallMark.CompareTo(y.FirewallMark);
        if (c != 0) return c;
        c = x.Family.CompareTo(y.Family);
        if (c != 0) return c;
        c = x.Protocol.CompareTo(y.Protocol);
        if (c != 0) return c;
        if (x.Address is null || y.Address is null) return (x.Address is null).CompareTo(y.Address is null);
        c = new RealServerKey(x.Address, x.Port).CompareTo(new RealServerKey(y.Address, y.Port));
        return c;
    }
}
