using Merlin.Linux.Tests;

namespace Merlin.Ipvs.Tests;

/// <summary>Replies laid out as Linux 6.1's ip_vs_ctl.c fills them (ip_vs_genl_fill_service / _dest / _stats / _stats64).</summary>
internal static class KernelReplies
{
    public const ushort Family = IpvsRequestBytesTests.Family;

    public static byte[] Addr4(byte a, byte b, byte c, byte d) => [a, b, c, d, .. new byte[12]];

    public static byte[] Addr6(string address) => System.Net.IPAddress.Parse(address).GetAddressBytes();

    /// <summary>IPVS_*_ATTR_STATS: u32 counters and rates, u64 bytes (with a zero-length PAD before each u64, as on strict-alignment machines).</summary>
    public static Wire Stats(this Wire w, ushort type, uint conns, uint inPkts, uint outPkts, ulong inBytes, ulong outBytes) =>
        w.Nest(type)
            .AttrU32(1, conns).AttrU32(2, inPkts).AttrU32(3, outPkts)
            .Attr(11).AttrU64(4, inBytes).Attr(11).AttrU64(5, outBytes)
            .AttrU32(6, 1).AttrU32(7, 2).AttrU32(8, 3).AttrU32(9, 4).AttrU32(10, 5)
            .End();

    /// <summary>IPVS_*_ATTR_STATS64: everything u64.</summary>
    public static Wire Stats64(this Wire w, ushort type, ulong conns, ulong inPkts, ulong outPkts, ulong inBytes, ulong outBytes) =>
        w.Nest(type)
            .AttrU64(1, conns).AttrU64(2, inPkts).AttrU64(3, outPkts).AttrU64(4, inBytes).AttrU64(5, outBytes)
            .AttrU64(6, 10).AttrU64(7, 20).AttrU64(8, 30).AttrU64(9, 40).AttrU64(10, 50)
            .End();

    /// <summary>The body of a v4 TCP service as the kernel describes it (inside IPVS_CMD_ATTR_SERVICE).</summary>
    public static Wire ServiceV4(this Wire w, byte lastOctet, ushort port, string scheduler = "wlc", uint flags = 0x2, uint timeout = 0, uint netmask = 0xffffffff) =>
        w.AttrU16(1, 2).AttrU16(2, 6).Attr(3, Addr4(10, 0, 0, lastOctet)).AttrBe16(4, port)
            .AttrString(6, scheduler)
            .Attr(7, [.. BitConverter.GetBytes(flags), .. BitConverter.GetBytes(uint.MaxValue)])
            .AttrU32(8, timeout)
            .Attr(9, (byte)(netmask >> 24), (byte)(netmask >> 16), (byte)(netmask >> 8), (byte)netmask)
            .Stats(10, 1, 2, 3, 4, 5)
            .Stats64(12, 1, 2, 3, 4, 5);

    public static byte[] ServiceMessage(uint seq, uint pid, Func<Wire, Wire> body, ushort flags = 2) =>
        body(new Wire().Message(Family, flags, seq, pid).Genl(1).Nest(1)).End().End(message: true).ToArray();

    public static byte[] DestMessage(uint seq, uint pid, Func<Wire, Wire> body, ushort flags = 2) =>
        body(new Wire().Message(Family, flags, seq, pid).Genl(5).Nest(2)).End().End(message: true).ToArray();

    /// <summary>The controller's answer for "IPVS": CTRL_CMD_NEWFAMILY with id, name, version, hdrsize, maxattr.</summary>
    public static byte[] IpvsFamily(uint seq, uint pid) =>
        new Wire().Message(0x10, 0, seq, pid).Genl(1, 2)
            .AttrString(2, "IPVS").AttrU16(1, Family).AttrU32(3, 1).AttrU32(4, 0).AttrU32(5, 6)
            .End(message: true).ToArray();
}
