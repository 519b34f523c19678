using System.Net;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Linux.Tests;

namespace Merlin.Ipvs.Tests;

/// <summary>Each IPVS request, byte for byte, as &lt;linux/ip_vs.h&gt; lays it out (family id 0x22 here).</summary>
public class IpvsRequestBytesTests
{
    internal const ushort Family = 0x22;

    internal static readonly ServiceKey Tcp80 = ServiceKey.ForAddress(IPAddress.Parse("10.0.0.1"), 80, Protocol.Tcp);

    private static void AssertBytes(string expectedHex, Action<NetlinkBuffer> write)
    {
        using var buffer = new NetlinkBuffer();
        write(buffer);
        Assert.Equal(Convert.ToHexString(Wire.Hex(expectedHex)), Convert.ToHexString(buffer.WrittenSpan));
    }

    [Fact]
    public void NewService_V4_WithShFlagsAndPersistence() => AssertBytes("""
        68000000 2200 0100 00000000 00000000  // nlmsghdr: 104 bytes, family 0x22, NLM_F_REQUEST
        01010000  // genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
        5400 0180  // IPVS_CMD_ATTR_SERVICE (nested), 84 bytes
          0600 0100 0200 0000  // AF = AF_INET
          0600 0200 0600 0000  // PROTOCOL = IPPROTO_TCP
          1400 0300 0a000001 00000000 00000000 00000000  // ADDR: nf_inet_addr, 16 bytes
          0600 0400 0050 0000  // PORT = 80, big-endian
          0700 0600 736800 00  // SCHED_NAME = "sh" + NUL
          0c00 0700 19000000 ffffffff  // FLAGS = PERSISTENT|SCHED1|SCHED2, mask all
          0800 0800 2c010000  // TIMEOUT = 300
          0800 0900 ffffff00  // NETMASK = 255.255.255.0, big-endian
        """, b => IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService, Tcp80, new ServiceConfig
        {
            Scheduler = "sh", Flags = SchedulerFlags.Flag1 | SchedulerFlags.Flag2, PersistenceTimeout = 300, PersistenceNetmask = 24,
        }));

    [Fact]
    public void NewService_V6_WithMhPortAndOnePacket() => AssertBytes("""
        68000000 2200 0100 00000000 00000000
        01010000
        5400 0180
          0600 0100 0a00 0000  // AF = AF_INET6
          0600 0200 1100 0000  // PROTOCOL = IPPROTO_UDP
          1400 0300 20010db8 00000000 00000000 00000001
          0600 0400 0035 0000  // PORT = 53
          0700 0600 6d6800 00  // "mh"
          0c00 0700 14000000 ffffffff  // FLAGS = ONEPACKET|SCHED2 (mh-port)
          0800 0800 00000000  // TIMEOUT = 0: not persistent
          0800 0900 80000000  // NETMASK = 128: IPv6 takes a prefix length, host order
        """, b => IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService,
            ServiceKey.ForAddress(IPAddress.Parse("2001:db8::1"), 53, Protocol.Udp),
            new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2, OnePacket = true, PersistenceNetmask = 128 }));

    [Fact]
    public void NewService_FirewallMark_HasNoProtocolAddressOrPort() => AssertBytes("""
        4c000000 2200 0100 00000000 00000000
        01010000
        3800 0180
          0600 0100 0200 0000
          0800 0500 07000000  // FWMARK = 7
          0800 0600 77727200  // "wrr"
          0c00 0700 01000000 ffffffff  // PERSISTENT
          0800 0800 3c000000  // TIMEOUT = 60
          0800 0900 ffffffff  // /32
        """, b => IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService, ServiceKey.ForFirewallMark(7, IpFamily.V4),
            new ServiceConfig { Scheduler = "wrr", PersistenceTimeout = 60, PersistenceNetmask = 32 }));

    [Fact]
    public void SetService_DiffersOnlyInTheCommand()
    {
        using var a = new NetlinkBuffer();
        using var b = new NetlinkBuffer();
        var config = new ServiceConfig { Scheduler = "rr", PersistenceNetmask = 32 };
        IpvsCodec.WriteService(a, Family, IpvsKernel.CmdNewService, Tcp80, config);
        IpvsCodec.WriteService(b, Family, IpvsKernel.CmdSetService, Tcp80, config);
        var x = a.WrittenSpan.ToArray();
        var y = b.WrittenSpan.ToArray();
        Assert.Equal(1, x[16]);
        Assert.Equal(2, y[16]);
        y[16] = 1;
        Assert.Equal(x, y);
    }

    [Fact]
    public void NewDestination_MaxWeight_GueTunnelWithPortAndFlags_Thresholds() => AssertBytes("""
        a4000000 2200 0100 00000000 00000000  // 164 bytes
        05010000  // IPVS_CMD_NEW_DEST
        3000 0180  // IPVS_CMD_ATTR_SERVICE: the key only
          0600 0100 0200 0000
          0600 0200 0600 0000
          1400 0300 0a000001 00000000 00000000 00000000
          0600 0400 0050 0000
        6000 0280  // IPVS_CMD_ATTR_DEST (nested), 96 bytes
          0600 0b00 0200 0000  // ADDR_FAMILY = AF_INET
          1400 0100 0a000002 00000000 00000000 00000000
          0600 0200 1f90 0000  // PORT = 8080
          0800 0300 02000000  // FWD_METHOD = IP_VS_CONN_F_TUNNEL
          0800 0400 ffffff7f  // WEIGHT = 2,147,483,647 (u32)
          0800 0500 e8030000  // U_THRESH = 1000
          0800 0600 0a000000  // L_THRESH = 10
          0500 0d00 01 000000  // TUN_TYPE = GUE (u8)
          0600 0e00 17c0 0000  // TUN_PORT = 6080, big-endian
          0600 0f00 0300 0000  // TUN_FLAGS = CSUM|REMCSUM
        """, b => IpvsCodec.WriteDestination(b, Family, IpvsKernel.CmdNewDest, Tcp80,
            new RealServerKey(IPAddress.Parse("10.0.0.2"), 8080),
            new RealServerConfig
            {
                Weight = int.MaxValue, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080,
                TunnelFlags = TunnelFlags.Csum | TunnelFlags.RemoteCsum, UpperThreshold = 1000, LowerThreshold = 10,
            }));

    [Fact]
    public void NewDestination_DefaultTunnelSettings_AreNotSent() => AssertBytes("""
        8c000000 2200 0100 00000000 00000000
        05010000
        3000 0180
          0600 0100 0a00 0000
          0600 0200 0600 0000
          1400 0300 20010db8 00000000 00000000 00000001
          0600 0400 01bb 0000
        4800 0280
          0600 0b00 0a00 0000
          1400 0100 20010db8 00000000 00000000 00000002
          0600 0200 01bb 0000
          0800 0300 03000000  // FWD_METHOD = IP_VS_CONN_F_DROUTE
          0800 0400 01000000
          0800 0500 00000000
          0800 0600 00000000
        """, b => IpvsCodec.WriteDestination(b, Family, IpvsKernel.CmdNewDest,
            ServiceKey.ForAddress(IPAddress.Parse("2001:db8::1"), 443, Protocol.Tcp),
            new RealServerKey(IPAddress.Parse("2001:db8::2"), 443), new RealServerConfig { Weight = 1 }));

    [Fact]
    public void NewDestination_Masq_IsForwardZero() => AssertBytes("""
        8c000000 2200 0100 00000000 00000000
        05010000
        3000 0180 0600 0100 0200 0000 0600 0200 0600 0000 1400 0300 0a000001 00000000 00000000 00000000 0600 0400 0050 0000
        4800 0280
          0600 0b00 0200 0000
          1400 0100 c0a80001 00000000 00000000 00000000
          0600 0200 0050 0000
          0800 0300 00000000  // IP_VS_CONN_F_MASQ
          0800 0400 05000000
          0800 0500 00000000
          0800 0600 00000000
        """, b => IpvsCodec.WriteDestination(b, Family, IpvsKernel.CmdNewDest, Tcp80,
            new RealServerKey(IPAddress.Parse("192.168.0.1"), 80), new RealServerConfig { Weight = 5, Forward = ForwardMethod.Masq }));

    [Fact]
    public void DeleteDestination_SendsOnlyItsAddress() => AssertBytes("""
        6c000000 2200 0100 00000000 00000000
        07010000  // IPVS_CMD_DEL_DEST
        3000 0180 0600 0100 0200 0000 0600 0200 0600 0000 1400 0300 0a000001 00000000 00000000 00000000 0600 0400 0050 0000
        2800 0280
          0600 0b00 0200 0000
          1400 0100 0a000002 00000000 00000000 00000000
          0600 0200 0050 0000
        """, b => IpvsCodec.WriteDestination(b, Family, IpvsKernel.CmdDelDest, Tcp80, new RealServerKey(IPAddress.Parse("10.0.0.2"), 80), null));

    [Fact]
    public void DeleteService_FirewallMarkV6() => AssertBytes("""
        28000000 2200 0100 00000000 00000000
        03010000  // IPVS_CMD_DEL_SERVICE
        1400 0180
          0600 0100 0a00 0000
          0800 0500 01000000
        """, b => IpvsCodec.WriteServiceKeyCommand(b, Family, IpvsKernel.CmdDelService, ServiceKey.ForFirewallMark(1, IpFamily.V6)));

    [Fact]
    public void GetDestinations_CarriesTheServiceKey() => AssertBytes("""
        44000000 2200 0100 00000000 00000000
        08010000  // IPVS_CMD_GET_DEST
        3000 0180 0600 0100 0200 0000 0600 0200 0600 0000 1400 0300 0a000001 00000000 00000000 00000000 0600 0400 0050 0000
        """, b => IpvsCodec.WriteServiceKeyCommand(b, Family, IpvsKernel.CmdGetDest, Tcp80));

    [Theory]
    [InlineData(IpvsKernel.CmdFlush, "11")]
    [InlineData(IpvsKernel.CmdGetInfo, "0f")]
    [InlineData(IpvsKernel.CmdGetConfig, "0d")]
    [InlineData(IpvsKernel.CmdGetService, "04")]
    [InlineData(IpvsKernel.CmdZero, "10")]
    public void CommandsWithoutAttributes_AreHeaderAndGenlHeader(byte command, string hex) =>
        AssertBytes($"14000000 2200 0100 00000000 00000000 {hex}010000", b => IpvsCodec.WriteCommand(b, Family, command));

    [Fact]
    public void SetTimeouts_SendsEachNonZeroTimeoutInSeconds() => AssertBytes("""
        2c000000 2200 0100 00000000 00000000
        0c010000  // IPVS_CMD_SET_CONFIG
        0800 0400 84030000  // TIMEOUT_TCP = 900
        0800 0500 78000000  // TIMEOUT_TCP_FIN = 120
        0800 0600 2c010000  // TIMEOUT_UDP = 300
        """, b => IpvsCodec.WriteSetTimeouts(b, Family, new IpvsTimeouts(TimeSpan.FromSeconds(900), TimeSpan.FromSeconds(120), TimeSpan.FromSeconds(300))));

    [Fact]
    public void SetTimeouts_LeavesOutZeros() => AssertBytes("""
        1c000000 2200 0100 00000000 00000000
        0c010000
        0800 0600 1e000000
        """, b => IpvsCodec.WriteSetTimeouts(b, Family, new IpvsTimeouts(TimeSpan.Zero, TimeSpan.Zero, TimeSpan.FromSeconds(30))));

    [Theory]
    [InlineData(0, "00000000")]
    [InlineData(8, "ff000000")]
    [InlineData(16, "ffff0000")]
    [InlineData(31, "fffffffe")]
    [InlineData(32, "ffffffff")]
    public void Ipv4Netmask_IsTheMaskInNetworkOrder(byte prefix, string mask)
    {
        using var b = new NetlinkBuffer();
        IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService, Tcp80, new ServiceConfig { Scheduler = "rr", PersistenceNetmask = prefix });
        Assert.EndsWith("08000900" + mask.ToUpperInvariant(), Convert.ToHexString(b.WrittenSpan));
    }

    [Fact]
    public void WeightAboveTheKernelsInt_IsRejected_BeforeAnythingIsSent()
    {
        using var b = new NetlinkBuffer();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => IpvsCodec.WriteDestination(b, Family, IpvsKernel.CmdNewDest, Tcp80,
            new RealServerKey(IPAddress.Loopback, 80), new RealServerConfig { Weight = (uint)int.MaxValue + 1 }));
        Assert.Contains("2147483648", e.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("a-scheduler-name-too-long")]
    [InlineData("wrré")]
    public void SchedulerNameTheKernelCannotHold_IsRejected(string scheduler)
    {
        using var b = new NetlinkBuffer();
        Assert.Throws<ArgumentException>(() => IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService, Tcp80, new ServiceConfig { Scheduler = scheduler }));
    }

    [Fact]
    public void SchedulerFlagsOutsideSched1To3_AreRejected()
    {
        using var b = new NetlinkBuffer();
        Assert.Throws<ArgumentException>(() => IpvsCodec.WriteService(b, Family, IpvsKernel.CmdNewService, Tcp80,
            new ServiceConfig { Scheduler = "rr", Flags = (SchedulerFlags)0x40 }));
    }

    [Fact]
    public void KeyWhoseAddressIsNotOfItsFamily_IsRejected()
    {
        using var b = new NetlinkBuffer();
        var key = Tcp80 with { Family = IpFamily.V6 };
        Assert.Throws<ArgumentException>(() => IpvsCodec.WriteServiceKeyCommand(b, Family, IpvsKernel.CmdDelService, key));
        Assert.Throws<ArgumentException>(() => IpvsCodec.WriteServiceKeyCommand(b, Family, IpvsKernel.CmdDelService, new ServiceKey { Port = 80 }));
    }

    [Fact]
    public void TimeoutThatIsNotWholeSeconds_IsRejected()
    {
        using var b = new NetlinkBuffer();
        Assert.Throws<ArgumentOutOfRangeException>(() => IpvsCodec.WriteSetTimeouts(b, Family,
            new IpvsTimeouts(TimeSpan.FromMilliseconds(1500), TimeSpan.Zero, TimeSpan.Zero)));
    }
}
