namespace Merlin.Linux;

/// <summary>Framing constants of netlink(7), as in &lt;linux/netlink.h&gt;.</summary>
public static class Netlink
{
    /// <summary>AF_NETLINK.</summary>
    public const int AddressFamily = 16;

    /// <summary>NETLINK_ROUTE (rtnetlink): links, addresses, routes, neighbours.</summary>
    public const int ProtocolRoute = 0;

    /// <summary>NETLINK_NETFILTER (nfnetlink): nf_tables, conntrack, …</summary>
    public const int ProtocolNetfilter = 12;

    /// <summary>NETLINK_GENERIC: the protocol generic-netlink families (IPVS, nl80211, …) live on.</summary>
    public const int ProtocolGeneric = 16;

    /// <summary>sizeof(struct nlmsghdr).</summary>
    public const int HeaderLength = 16;

    /// <summary>sizeof(struct nlattr).</summary>
    public const int AttributeHeaderLength = 4;

    /// <summary>NLMSG_ALIGNTO and NLA_ALIGNTO.</summary>
    public const int Alignment = 4;

    /// <summary>NLA_F_NESTED: the attribute's payload is itself a run of attributes.</summary>
    public const ushort AttributeNested = 0x8000;

    /// <summary>NLA_F_NET_BYTEORDER.</summary>
    public const ushort AttributeNetByteOrder = 0x4000;

    /// <summary>NLA_TYPE_MASK: the type without the two flag bits.</summary>
    public const ushort AttributeTypeMask = 0x3FFF;

    /// <summary>Rounds a length up to the 4-byte boundary (NLMSG_ALIGN / NLA_ALIGN).</summary>
    public static int Align(int length) => (length + Alignment - 1) & ~(Alignment - 1);
}

/// <summary>nlmsg_type values below NLMSG_MIN_TYPE, which netlink itself reserves.</summary>
public static class NetlinkMessageType
{
    public const ushort Noop = 1;
    public const ushort Error = 2;
    public const ushort Done = 3;
    public const ushort Overrun = 4;

    /// <summary>NLMSG_MIN_TYPE; also GENL_ID_CTRL, the generic-netlink controller's family id.</summary>
    public const ushort MinType = 0x10;
}

/// <summary>nlmsg_flags (NLM_F_*). The high byte means different things for GET, NEW, DELETE and ACK messages.</summary>
[Flags]
public enum NetlinkFlags : ushort
{
    None = 0,
    Request = 0x01,
    Multi = 0x02,
    Ack = 0x04,
    Echo = 0x08,
    DumpInterrupted = 0x10,
    DumpFiltered = 0x20,

    // GET requests
    Root = 0x100,
    Match = 0x200,
    Atomic = 0x400,
    Dump = Root | Match,

    // NEW requests
    Replace = 0x100,
    Exclusive = 0x200,
    Create = 0x400,
    Append = 0x800,

    // ACK (NLMSG_ERROR) replies
    Capped = 0x100,
    AckTlvs = 0x200,
}

/// <summary>The generic-netlink controller (family "nlctrl", id GENL_ID_CTRL), from &lt;linux/genetlink.h&gt;.</summary>
public static class GenericNetlinkController
{
    public const ushort FamilyId = NetlinkMessageType.MinType;
    public const byte Version = 2;

    public const byte CommandGetFamily = 3;

    public const ushort AttributeFamilyId = 1;
    public const ushort AttributeFamilyName = 2;
    public const ushort AttributeVersion = 3;
    public const ushort AttributeHeaderSize = 4;
    public const ushort AttributeMaxAttribute = 5;

    /// <summary>GENL_NAMSIZ: a family name is at most 15 characters and a NUL.</summary>
    public const int MaxNameLength = 15;
}

/// <summary>sizeof(struct genlmsghdr): command, version, two reserved bytes.</summary>
public static class GenericNetlink
{
    public const int HeaderLength = 4;
}

/// <summary>Attributes after the header echoed in an NLMSG_ERROR (NLMSGERR_ATTR_*), sent with NETLINK_EXT_ACK.</summary>
internal static class NetlinkErrorAttribute
{
    public const ushort Message = 1;
    public const ushort Offset = 2;
}
