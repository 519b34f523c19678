using System.Buffers.Binary;
using System.Net.Sockets;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Which pinned flows must lose their pin: those pinned to a server that is no longer among their service's servers
/// (it left the service, failed its health check or changed MAC, or the service is gone). The pinned-flow rule
/// forwards on the pin alone, so such a flow keeps going to that server until its pin is deleted; the dataplane
/// deletes those pins right after the transaction that took the server out (docs/architecture.md, "Pinned flows").
/// Pure: pins are given as the kernel dumps them.
/// </summary>
internal static class PinSweep
{
    /// <summary>
    /// Whether <paramref name="now"/> takes a server from a service it was in in <paramref name="before"/> (or drops
    /// a pinned service): only then can a pin have become stale. A service whose MACs are the same instance is skipped.
    /// </summary>
    public static bool Departed(IReadOnlyList<PinTarget> before, IReadOnlyList<PinTarget> now)
    {
        if (before.Count == 0) return false;
        var byService = new Dictionary<ServiceKey, SetContent>(now.Count);
        foreach (var target in now) byService[target.Service] = target.Macs;
        foreach (var had in before)
        {
            if (!byService.TryGetValue(had.Service, out var macs)) return true;
            if (ReferenceEquals(macs, had.Macs)) continue;
            var kept = macs.Elements().Select(e => e.Key).ToHashSet(StringComparer.Ordinal);
            if (had.Macs.Elements().Any(e => !kept.Contains(e.Key))) return true;
        }
        return false;
    }

    /// <summary>
    /// The keys of the pins of <c>flows4</c> (<paramref name="v6"/> false) or <c>flows6</c> whose server is not among
    /// their service's in <paramref name="targets"/>. An IPv4 pin's key holds its service's address and port
    /// (<c>saddr . daddr . sport . dport</c>, each field padded to 4 bytes); an IPv6 pin's key holds only the port
    /// (<c>jhash(saddr . daddr) . sport . dport</c>), so an IPv6 pin is kept while its server is among the servers
    /// of any IPv6 service on its port. No key holds the protocol: a TCP and a UDP service on one address and port
    /// count as one.
    /// </summary>
    public static List<byte[]> Stale(bool v6, IReadOnlyList<SetElement> pins, IReadOnlyList<PinTarget> targets)
    {
        var allowed = new HashSet<(uint Address, ushort Port, ulong Mac)>();
        foreach (var target in targets)
        {
            var key = target.Service;
            if (key.Address is not { } address || (address.AddressFamily == AddressFamily.InterNetworkV6) != v6) continue;
            uint a = v6 ? 0 : BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes());
            foreach (var (mac, _) in target.Macs.Elements()) allowed.Add((a, key.Port, MacNumber(mac)));
        }
        var stale = new List<byte[]>();
        int keyLength = v6 ? 12 : 16;
        int portAt = v6 ? 8 : 12;
        foreach (var pin in pins)
        {
            if (pin.Key.Length != keyLength || pin.Value.Length != 6)
                throw new FormatException($"a pin of {(v6 ? "flows6" : "flows4")} has a {pin.Key.Length}-byte key and a {pin.Value.Length}-byte value where {keyLength} and 6 were expected");
            uint address = v6 ? 0 : BinaryPrimitives.ReadUInt32BigEndian(pin.Key.AsSpan(4));
            ushort port = BinaryPrimitives.ReadUInt16BigEndian(pin.Key.AsSpan(portAt));
            if (!allowed.Contains((address, port, MacNumber(pin.Value)))) stale.Add(pin.Key);
        }
        return stale;
    }

    private static ulong MacNumber(string text)
    {
        Span<byte> mac = stackalloc byte[6];
        SetStaging.ParseMac(text, mac);
        return MacNumber(mac);
    }

    private static ulong MacNumber(ReadOnlySpan<byte> mac)
    {
        ulong n = 0;
        foreach (var b in mac[..6]) n = n << 8 | b;
        return n;
    }
}
