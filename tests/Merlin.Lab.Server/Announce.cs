using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace Merlin.Lab.Server;

/// <summary>
/// <c>announce --interface eth0 --address 2001:db8::100 [--count 1]</c>: sends unsolicited IPv6 neighbour
/// advertisements (RFC 4861 §7.2.6, override flag set) for an address this host now holds, to all nodes on
/// the link, so neighbours replace a cached link-layer address at once — the IPv6 counterpart of a
/// gratuitous ARP (<c>arping -U</c>), which the lab uses for IPv4. Linux sends none by itself when an
/// address is added.
/// </summary>
public static class Announce
{
    public static async Task<int> RunAsync(Args a)
    {
        var name = a.RequiredString("interface");
        var address = a.Address("address") ?? throw new UsageException("--address is required");
        var count = a.Int("count", 1, 1, 10);
        a.RejectUnknown();
        if (address.AddressFamily != AddressFamily.InterNetworkV6)
            throw new UsageException("--address must be IPv6 (for IPv4 use arping -U)");

        var nic = NetworkInterface.GetAllNetworkInterfaces().FirstOrDefault(n => n.Name == name)
                  ?? throw new UsageException($"no interface named {name}");
        var index = nic.GetIPProperties().GetIPv6Properties().Index;
        var mac = nic.GetPhysicalAddress().GetAddressBytes();
        if (mac.Length != 6) throw new UsageException($"{name} has no Ethernet address");

        // Type 136, code 0, checksum (the kernel fills it in for ICMPv6 raw sockets), flags: Override only
        // (an unsolicited advertisement to a multicast group must not set Solicited), the target, and a
        // target link-layer address option (type 2, length 1 × 8 bytes).
        var packet = new byte[32];
        packet[0] = 136;
        packet[4] = 0x20;
        address.GetAddressBytes().CopyTo(packet, 8);
        packet[24] = 2;
        packet[25] = 1;
        mac.CopyTo(packet, 26);

        using var s = new Socket(AddressFamily.InterNetworkV6, SocketType.Raw, ProtocolType.IcmpV6);
        // Receivers drop neighbour discovery with a hop limit other than 255.
        s.SetSocketOption(SocketOptionLevel.IPv6, SocketOptionName.MulticastTimeToLive, 255);
        s.SetSocketOption(SocketOptionLevel.IPv6, SocketOptionName.MulticastInterface, index);
        s.Bind(new IPEndPoint(address, 0));
        var allNodes = new IPEndPoint(new IPAddress(IPAddress.Parse("ff02::1").GetAddressBytes(), index), 0);
        for (var i = 0; i < count; i++)
        {
            if (i > 0) await Task.Delay(100);
            await s.SendToAsync(packet, SocketFlags.None, allNodes);
        }
        Console.Out.WriteLine($"announced {address} at {BitConverter.ToString(mac).Replace('-', ':').ToLowerInvariant()} on {name} ×{count}");
        return 0;
    }
}
