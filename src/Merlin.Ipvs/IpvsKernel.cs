namespace Merlin.Ipvs;

/// <summary>
/// The generic-netlink interface of IPVS, transcribed from &lt;linux/ip_vs.h&gt; (linux-libc-dev 6.1). Each
/// attribute's comment gives the type the kernel declares in its policy and fills in its replies; the
/// codec reads and writes exactly that width.
/// </summary>
internal static class IpvsKernel
{
    public const string FamilyName = "IPVS";
    public const byte GenlVersion = 1;

    // IPVS_CMD_*
    public const byte CmdNewService = 1;
    public const byte CmdSetService = 2;
    public const byte CmdDelService = 3;
    public const byte CmdGetService = 4;
    public const byte CmdNewDest = 5;
    public const byte CmdSetDest = 6;
    public const byte CmdDelDest = 7;
    public const byte CmdGetDest = 8;
    public const byte CmdSetConfig = 12;
    public const byte CmdGetConfig = 13;
    public const byte CmdSetInfo = 14;
    public const byte CmdGetInfo = 15;
    public const byte CmdZero = 16;
    public const byte CmdFlush = 17;

    // IPVS_CMD_ATTR_*
    public const ushort CmdAttrService = 1;        // nested
    public const ushort CmdAttrDest = 2;           // nested
    public const ushort CmdAttrTimeoutTcp = 4;     // u32 seconds
    public const ushort CmdAttrTimeoutTcpFin = 5;  // u32 seconds
    public const ushort CmdAttrTimeoutUdp = 6;     // u32 seconds

    // IPVS_SVC_ATTR_*
    public const ushort SvcAttrAf = 1;         // u16
    public const ushort SvcAttrProtocol = 2;   // u16
    public const ushort SvcAttrAddr = 3;       // union nf_inet_addr (16 bytes)
    public const ushort SvcAttrPort = 4;       // __be16
    public const ushort SvcAttrFwmark = 5;     // u32
    public const ushort SvcAttrSchedName = 6;  // NUL string, < IP_VS_SCHEDNAME_MAXLEN
    public const ushort SvcAttrFlags = 7;      // struct ip_vs_flags { u32 flags; u32 mask; }
    public const ushort SvcAttrTimeout = 8;    // u32 seconds
    public const ushort SvcAttrNetmask = 9;    // __be32 (IPv4 mask) / u32 prefix length (IPv6)
    public const ushort SvcAttrStats = 10;     // nested stats, u32 counters and u64 bytes
    public const ushort SvcAttrPeName = 11;    // NUL string
    public const ushort SvcAttrStats64 = 12;   // nested stats, all u64

    // IPVS_DEST_ATTR_*
    public const ushort DestAttrAddr = 1;          // union nf_inet_addr (16 bytes)
    public const ushort DestAttrPort = 2;          // __be16
    public const ushort DestAttrFwdMethod = 3;     // u32 (IP_VS_CONN_F_FWD_MASK bits)
    public const ushort DestAttrWeight = 4;        // u32 (stored as int: at most 2^31-1)
    public const ushort DestAttrUThresh = 5;       // u32
    public const ushort DestAttrLThresh = 6;       // u32
    public const ushort DestAttrActiveConns = 7;   // u32
    public const ushort DestAttrInactConns = 8;    // u32
    public const ushort DestAttrPersistConns = 9;  // u32
    public const ushort DestAttrStats = 10;        // nested stats
    public const ushort DestAttrAddrFamily = 11;   // u16
    public const ushort DestAttrStats64 = 12;      // nested stats, all u64
    public const ushort DestAttrTunType = 13;      // u8
    public const ushort DestAttrTunPort = 14;      // __be16
    public const ushort DestAttrTunFlags = 15;     // u16

    // IPVS_STATS_ATTR_*
    public const ushort StatsConns = 1;
    public const ushort StatsInPkts = 2;
    public const ushort StatsOutPkts = 3;
    public const ushort StatsInBytes = 4;
    public const ushort StatsOutBytes = 5;
    public const ushort StatsCps = 6;
    public const ushort StatsInPps = 7;
    public const ushort StatsOutPps = 8;
    public const ushort StatsInBps = 9;
    public const ushort StatsOutBps = 10;

    // IPVS_INFO_ATTR_*
    public const ushort InfoAttrVersion = 1;       // u32
    public const ushort InfoAttrConnTabSize = 2;   // u32

    // IP_VS_SVC_F_*
    public const uint SvcFlagPersistent = 0x0001;
    public const uint SvcFlagHashed = 0x0002;
    public const uint SvcFlagOnePacket = 0x0004;
    public const uint SvcFlagSchedMask = 0x0008 | 0x0010 | 0x0020;

    // IP_VS_CONN_F_* forwarding methods
    public const uint ConnFwdMask = 0x0007;
    public const uint ConnMasq = 0x0000;
    public const uint ConnLocalNode = 0x0001;
    public const uint ConnTunnel = 0x0002;
    public const uint ConnDirectRoute = 0x0003;

    public const int SchedNameMaxLength = 16 - 1;  // IP_VS_SCHEDNAME_MAXLEN with its NUL

    // <linux/socket.h>, <netinet/in.h>
    public const ushort AfInet = 2;
    public const ushort AfInet6 = 10;
    public const ushort IpProtoTcp = 6;
    public const ushort IpProtoUdp = 17;
    public const ushort IpProtoSctp = 132;
}
