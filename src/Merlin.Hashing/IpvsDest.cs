using System.Globalization;
using System.Net;

namespace Merlin.Hashing;

/// <summary>
/// A real server as the kernel's IPVS schedulers see it: its address (folded to 32 bits as IPVS
/// does for IPv6), port, current weight, and the last non-zero weight it was given (mh keeps a
/// drained server's slots by building from that one).
/// </summary>
public readonly record struct IpvsDest(string Id, uint FoldedAddress, ushort Port, int Weight, int LastWeight, bool Overloaded = false)
{
    /// <summary>A destination as added with <c>ipvsadm -a … -w weight</c>; <paramref name="endpoint"/> is "ip:port" or "[ipv6]:port".</summary>
    public static IpvsDest Create(string endpoint, int weight)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(weight);
        var flow = FlowKey.Parse(endpoint);
        return new IpvsDest(endpoint.Trim(), flow.KernelFold, flow.Port, weight, weight);
    }

    public static IpvsDest Create(IPAddress address, ushort port, int weight)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(weight);
        var flow = FlowKey.From(address, port);
        return new IpvsDest(flow.ToString(), flow.KernelFold, port, weight, weight);
    }

    /// <summary>An edit of the weight (<c>ipvsadm -e</c>): as __ip_vs_update_dest, last_weight follows unless the new weight is 0.</summary>
    public IpvsDest WithWeight(int weight)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(weight);
        return this with { Weight = weight, LastWeight = weight != 0 ? weight : LastWeight };
    }

    /// <summary>What is_unavailable() tests: weight ≤ 0 or the overload flag (upper threshold reached).</summary>
    public bool IsUnavailable => Weight <= 0 || Overloaded;

    public override string ToString() => $"{Id} w{Weight.ToString(CultureInfo.InvariantCulture)}";
}
