using System.Net;
using System.Net.NetworkInformation;

namespace Merlin.Linux;

/// <summary>An interface as RTM_GETLINK reports it: its index and link-layer address (null if it has none).</summary>
public sealed record LinkInfo(int Index, string Name, PhysicalAddress? Address);

/// <summary>
/// A neighbour entry as RTM_GETNEIGH reports it. <see cref="State"/> is ndm_state (NUD_*), <see cref="Flags"/>
/// ndm_flags (NTF_*), <see cref="ExtendedFlags"/> NDA_FLAGS_EXT (NTF_EXT_MANAGED, …; 0 before Linux 5.16).
/// </summary>
public sealed record NeighbourEntry(int InterfaceIndex, IPAddress Address, PhysicalAddress? LinkAddress, ushort State, byte Flags, uint ExtendedFlags)
{
    /// <summary>NTF_EXT_MANAGED: the kernel keeps this entry resolved by itself (Linux 5.16+).</summary>
    public bool Managed => (ExtendedFlags & Rtnetlink.ExtendedFlagManaged) != 0;
}

/// <summary>An address on an interface as RTM_GETADDR reports it (IFA_LOCAL, else IFA_ADDRESS) with its prefix length.</summary>
public sealed record InterfaceAddress(int InterfaceIndex, IPAddress Address, byte PrefixLength);

/// <summary>
/// Links, addresses and neighbours over rtnetlink (NETLINK_ROUTE; &lt;linux/rtnetlink.h&gt;, &lt;linux/if_addr.h&gt;, &lt;linux/neighbour.h&gt;), through
/// a <see cref="NetlinkClient"/> opened with <see cref="Netlink.ProtocolRoute"/>.
/// </summary>
public static class Rtnetlink
{
    public const ushort NewLink = 16, DeleteLink = 17, GetLink = 18;
    public const ushort NewAddress = 20, DeleteAddress = 21, GetAddress = 22;
    public const ushort NewNeighbour = 28, DeleteNeighbour = 29, GetNeighbour = 30;

    /// <summary>sizeof(struct ifinfomsg): family, pad, type, index, flags, change.</summary>
    public const int LinkHeaderLength = 16;

    /// <summary>sizeof(struct ifaddrmsg): family, prefix length, flags, scope, index.</summary>
    public const int AddressHeaderLength = 8;

    /// <summary>sizeof(struct ndmsg): family, 3 pad bytes, ifindex, state, flags, type.</summary>
    public const int NeighbourHeaderLength = 12;

    public const ushort LinkAttributeAddress = 1, LinkAttributeName = 3;        // IFLA_ADDRESS, IFLA_IFNAME
    public const ushort AddressAttributeAddress = 1, AddressAttributeLocal = 2;  // IFA_ADDRESS, IFA_LOCAL
    public const ushort NeighbourAttributeDestination = 1, NeighbourAttributeLinkAddress = 2, NeighbourAttributeFlagsExtended = 15;   // NDA_DST, NDA_LLADDR, NDA_FLAGS_EXT

    // NUD_* (ndm_state)
    public const ushort StateIncomplete = 0x01, StateReachable = 0x02, StateStale = 0x04, StateDelay = 0x08, StateProbe = 0x10,
        StateFailed = 0x20, StateNoArp = 0x40, StatePermanent = 0x80;

    /// <summary>IFA_F_NODAD (ifa_flags): an IPv6 address usable at once, without duplicate address detection.</summary>
    public const byte AddressFlagNoDad = 0x02;

    /// <summary>NTF_USE (ndm_flags): resolve the entry now, once, as if a packet had used it.</summary>
    public const byte FlagUse = 0x01;

    /// <summary>NTF_EXT_MANAGED (NDA_FLAGS_EXT).</summary>
    public const uint ExtendedFlagManaged = 0x01;

    /// <summary>The interface named <paramref name="name"/>, or null if there is none (ENODEV).</summary>
    public static LinkInfo? Link(NetlinkClient client, string name)
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        var mark = w.BeginMessage(GetLink, NetlinkFlags.None);
        w.WriteHeader(LinkHeaderLength);                    // struct ifinfomsg: any family, index 0
        w.WriteString(LinkAttributeName, name);
        w.EndMessage(mark);
        var found = new List<LinkInfo>(1);
        try
        {
            client.Execute(buffer, $"RTM_GETLINK {name}", static (message, found) =>
            {
                if (message.Type != NewLink || message.Payload.Length < LinkHeaderLength) return;
                var index = (int)HostOrder.ReadUInt32(message.Payload[4..]);
                string? linkName = null;
                PhysicalAddress? address = null;
                foreach (var a in new AttributeReader(message.Payload[LinkHeaderLength..]))
                {
                    if (a.Type == LinkAttributeName) linkName = a.GetString();
                    else if (a.Type == LinkAttributeAddress) address = new PhysicalAddress(a.Payload.ToArray());
                }
                found.Add(new LinkInfo(index, linkName ?? "", address));
            }, found);
        }
        catch (NetlinkException e) when (e.Errno is Errno.ENODEV or Errno.ENOENT)
        {
            return null;
        }
        return found.Count > 0 ? found[0] : null;
    }

    /// <summary>Every neighbour entry (IPv4 and IPv6) of interface <paramref name="interfaceIndex"/>, in every state.</summary>
    public static List<NeighbourEntry> Neighbours(NetlinkClient client, int interfaceIndex)
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        var mark = w.BeginMessage(GetNeighbour, NetlinkFlags.None);
        w.WriteHeader(NeighbourHeaderLength);               // struct ndmsg: AF_UNSPEC, both families
        w.EndMessage(mark);
        var entries = new List<NeighbourEntry>();
        client.Dump(buffer, "RTM_GETNEIGH", static (message, state) =>
        {
            var (entries, index) = state;
            if (message.Type != NewNeighbour || message.Payload.Length < NeighbourHeaderLength) return;
            var header = message.Payload;
            var ifindex = (int)HostOrder.ReadUInt32(header[4..]);
            if (ifindex != index) return;
            IPAddress? address = null;
            PhysicalAddress? linkAddress = null;
            uint extended = 0;
            foreach (var a in new AttributeReader(header[NeighbourHeaderLength..]))
            {
                if (a.Type == NeighbourAttributeDestination && a.Payload.Length is 4 or 16) address = new IPAddress(a.Payload);
                else if (a.Type == NeighbourAttributeLinkAddress) linkAddress = new PhysicalAddress(a.Payload.ToArray());
                else if (a.Type == NeighbourAttributeFlagsExtended) extended = a.GetUInt32();
            }
            if (address is not null) entries.Add(new NeighbourEntry(ifindex, address, linkAddress, HostOrder.ReadUInt16(header[8..]), header[10], extended));
        }, (entries, interfaceIndex));
        return entries;
    }

    /// <summary>Every address (IPv4 and IPv6) on interface <paramref name="interfaceIndex"/>.</summary>
    public static List<InterfaceAddress> Addresses(NetlinkClient client, int interfaceIndex)
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        var mark = w.BeginMessage(GetAddress, NetlinkFlags.None);
        w.WriteHeader(AddressHeaderLength);                 // struct ifaddrmsg: AF_UNSPEC, both families
        w.EndMessage(mark);
        var addresses = new List<InterfaceAddress>();
        client.Dump(buffer, "RTM_GETADDR", static (message, state) =>
        {
            var (addresses, index) = state;
            if (message.Type != NewAddress || message.Payload.Length < AddressHeaderLength) return;
            var header = message.Payload;
            var ifindex = (int)HostOrder.ReadUInt32(header[4..]);
            if (ifindex != index) return;
            IPAddress? local = null, address = null;
            foreach (var a in new AttributeReader(header[AddressHeaderLength..]))
            {
                if (a.Payload.Length is not (4 or 16)) continue;
                if (a.Type == AddressAttributeLocal) local = new IPAddress(a.Payload);
                else if (a.Type == AddressAttributeAddress) address = new IPAddress(a.Payload);
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a point-to-point link (and
            // the only one IPv6 sends).
            if ((local ?? address) is { } own) addresses.Add(new InterfaceAddress(ifindex, own, header[1]));
        }, (addresses, interfaceIndex));
        return addresses;
    }

    /// <summary>
    /// RTM_NEWADDR (NLM_F_CREATE | NLM_F_EXCL) of <paramref name="address"/>/<paramref name="prefixLength"/>, scope
    /// global, as <c>ip addr add ADDRESS/PREFIX dev DEV [nodad]</c> asks; the kernel answers EEXIST if it is there.
    /// </summary>
    public static void WriteAddAddress(NetlinkWriter w, int interfaceIndex, IPAddress address, byte prefixLength, bool noDuplicateDetection = false) =>
        w.EndMessage(Address(w, NewAddress, NetlinkFlags.Exclusive | NetlinkFlags.Create, interfaceIndex, address, prefixLength, noDuplicateDetection ? AddressFlagNoDad : (byte)0));

    /// <summary>RTM_DELADDR of <paramref name="address"/>/<paramref name="prefixLength"/>, as <c>ip addr del ADDRESS/PREFIX dev DEV</c> asks; EADDRNOTAVAIL if it is not there.</summary>
    public static void WriteDeleteAddress(NetlinkWriter w, int interfaceIndex, IPAddress address, byte prefixLength) =>
        w.EndMessage(Address(w, DeleteAddress, NetlinkFlags.None, interfaceIndex, address, prefixLength, 0));

    /// <summary>nlmsghdr (REQUEST | ACK | <paramref name="flags"/>), struct ifaddrmsg, IFA_LOCAL and IFA_ADDRESS (both the address, as ip sends them); the caller ends the message.</summary>
    private static MessageMark Address(NetlinkWriter w, ushort type, NetlinkFlags flags, int interfaceIndex, IPAddress address, byte prefixLength, byte ifaFlags)
    {
        var family = Family(address, nameof(address));
        var maxPrefix = family == PosixSocket.InterNetwork ? 32 : 128;
        if (prefixLength > maxPrefix) throw new ArgumentOutOfRangeException(nameof(prefixLength), prefixLength, $"prefix length of {address}: at most {maxPrefix}");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(interfaceIndex);
        var mark = w.BeginMessage(type, NetlinkFlags.Request | NetlinkFlags.Ack | flags);
        var header = w.WriteHeader(AddressHeaderLength);
        header[0] = (byte)family;                               // ifa_family
        header[1] = prefixLength;                               // ifa_prefixlen
        header[2] = ifaFlags;                                   // ifa_flags; ifa_scope 0: RT_SCOPE_UNIVERSE
        HostOrder.Write(header[4..], (uint)interfaceIndex);     // ifa_index
        Span<byte> bytes = stackalloc byte[16];
        address.TryWriteBytes(bytes, out var written);
        w.WriteBytes(AddressAttributeLocal, bytes[..written]);
        w.WriteBytes(AddressAttributeAddress, bytes[..written]);
        return mark;
    }

    /// <summary>
    /// RTM_NEWNEIGH for a managed entry (NLM_F_CREATE | NLM_F_REPLACE, NUD_NONE, NDA_FLAGS_EXT
    /// NTF_EXT_MANAGED): the kernel resolves <paramref name="address"/> now and keeps it resolved (Linux
    /// 5.16+), as <c>ip neigh replace ADDRESS dev DEV managed</c> asks.
    /// </summary>
    public static void WriteManagedNeighbour(NetlinkWriter w, int interfaceIndex, IPAddress address)
    {
        var mark = Neighbour(w, NewNeighbour, NetlinkFlags.Replace | NetlinkFlags.Create, interfaceIndex, address, 0, 0);
        w.WriteUInt32(NeighbourAttributeFlagsExtended, ExtendedFlagManaged);
        w.EndMessage(mark);
    }

    /// <summary>
    /// RTM_NEWNEIGH with NTF_USE (NLM_F_CREATE | NLM_F_REPLACE): one resolution of <paramref name="address"/>
    /// now, as a packet to it would start, for kernels without managed entries; as <c>ip neigh replace
    /// ADDRESS dev DEV use</c> asks.
    /// </summary>
    public static void WriteResolveNeighbourOnce(NetlinkWriter w, int interfaceIndex, IPAddress address) =>
        w.EndMessage(Neighbour(w, NewNeighbour, NetlinkFlags.Replace | NetlinkFlags.Create, interfaceIndex, address, StatePermanent, FlagUse));

    /// <summary>RTM_DELNEIGH for <paramref name="address"/> on the interface, as <c>ip neigh del ADDRESS dev DEV</c> asks.</summary>
    public static void WriteDeleteNeighbour(NetlinkWriter w, int interfaceIndex, IPAddress address) =>
        w.EndMessage(Neighbour(w, DeleteNeighbour, NetlinkFlags.None, interfaceIndex, address, StatePermanent, 0));

    /// <summary>nlmsghdr (REQUEST | ACK | <paramref name="flags"/>), struct ndmsg and NDA_DST; the caller ends the message.</summary>
    private static MessageMark Neighbour(NetlinkWriter w, ushort type, NetlinkFlags flags, int interfaceIndex, IPAddress address, ushort state, byte ndmFlags)
    {
        var family = Family(address, nameof(address));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(interfaceIndex);
        var mark = w.BeginMessage(type, NetlinkFlags.Request | NetlinkFlags.Ack | flags);
        var header = w.WriteHeader(NeighbourHeaderLength);
        header[0] = (byte)family;                               // ndm_family (3 pad bytes follow)
        HostOrder.Write(header[4..], (uint)interfaceIndex);     // ndm_ifindex
        HostOrder.Write(header[8..], state);                    // ndm_state
        header[10] = ndmFlags;                                  // ndm_flags
        Span<byte> bytes = stackalloc byte[16];
        address.TryWriteBytes(bytes, out var written);
        w.WriteBytes(NeighbourAttributeDestination, bytes[..written]);
        return mark;
    }

    private static int Family(IPAddress address, string parameter) => address.AddressFamily switch
    {
        System.Net.Sockets.AddressFamily.InterNetwork => PosixSocket.InterNetwork,
        System.Net.Sockets.AddressFamily.InterNetworkV6 => PosixSocket.InterNetworkV6,
        _ => throw new ArgumentException($"address {address}: not IPv4 or IPv6", parameter),
    };
}
