using System.Net;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Linux.Tests;

namespace Merlin.Ipvs.Tests;

/// <summary>Decoding hand-built kernel replies: every attribute at its declared width, and typed errors for the rest.</summary>
public class IpvsReplyDecodingTests
{
    private static IpvsService Service(byte[] message)
    {
        var reader = new NetlinkMessageReader(message);
        Assert.True(reader.TryRead(out var m));
        return IpvsCodec.DecodeServiceMessage(m);
    }

    private static IpvsDestination Destination(byte[] message, IpFamily family = IpFamily.V4)
    {
        var reader = new NetlinkMessageReader(message);
        Assert.True(reader.TryRead(out var m));
        return IpvsCodec.DecodeDestinationMessage(m, family);
    }

    [Fact]
    public void Service_AsTheKernelFillsIt()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 80, "sh", flags: 0x2 | 0x1 | 0x8 | 0x10, timeout: 300, netmask: 0xffffff00)));
        Assert.Equal(ServiceKey.ForAddress(IPAddress.Parse("10.0.0.1"), 80, Protocol.Tcp), s.Key);
        Assert.Equal(new ServiceConfig
        {
            Scheduler = "sh", Flags = SchedulerFlags.Flag1 | SchedulerFlags.Flag2, PersistenceTimeout = 300, PersistenceNetmask = 24,
        }, s.Config);
        Assert.Null(s.PersistenceEngine);
    }

    [Fact]
    public void Service_HashedFlag_IsNotConfiguration()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 80, flags: 0x2)));
        Assert.Equal(SchedulerFlags.None, s.Config.Flags);
        Assert.False(s.Config.OnePacket);
        Assert.Equal(0u, s.Config.PersistenceTimeout);
    }

    [Fact]
    public void Service_TimeoutWithoutPersistentFlag_IsNotPersistence()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 80, flags: 0x2, timeout: 300)));
        Assert.Equal(0u, s.Config.PersistenceTimeout);
    }

    [Fact]
    public void Service_Stats64_WinOverTheOlder32BitStats()
    {
        var big = (ulong)uint.MaxValue + 7;
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w
            .AttrU16(1, 2).AttrU16(2, 17).Attr(3, KernelReplies.Addr4(10, 0, 0, 9)).AttrBe16(4, 53)
            .AttrString(6, "rr").Attr(7, [2, 0, 0, 0, 255, 255, 255, 255]).AttrU32(8, 0).Attr(9, 255, 255, 255, 255)
            .Stats(10, 1, 2, 3, 4, 5)
            .Stats64(12, big, big + 1, big + 2, big + 3, big + 4)));
        Assert.Equal(new IpvsStats(big, big + 1, big + 2, big + 3, big + 4, 10, 20, 30, 40, 50), s.Stats);
        Assert.Equal(Protocol.Udp, s.Key.Protocol);
    }

    [Fact]
    public void Service_FromAKernelWithoutStats64_UsesStats()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w
            .AttrU16(1, 2).AttrU16(2, 6).Attr(3, KernelReplies.Addr4(10, 0, 0, 9)).AttrBe16(4, 80)
            .AttrString(6, "rr").Attr(7, [2, 0, 0, 0, 255, 255, 255, 255]).AttrU32(8, 0).Attr(9, 255, 255, 255, 255)
            .Stats(10, 7, 8, 9, 1UL << 40, 1UL << 41)));
        Assert.Equal(new IpvsStats(7, 8, 9, 1UL << 40, 1UL << 41, 1, 2, 3, 4, 5), s.Stats);
    }

    [Fact]
    public void Service_V6_NetmaskIsAPrefixLength()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w
            .AttrU16(1, 10).AttrU16(2, 132).Attr(3, KernelReplies.Addr6("2001:db8::80")).AttrBe16(4, 443)
            .AttrString(6, "mh").Attr(7, [0x1 | 0x4 | 0x10 | 0x2, 0, 0, 0, 255, 255, 255, 255]).AttrU32(8, 600).AttrU32(9, 64)));
        Assert.Equal(ServiceKey.ForAddress(IPAddress.Parse("2001:db8::80"), 443, Protocol.Sctp), s.Key);
        Assert.Equal(new ServiceConfig
        {
            Scheduler = "mh", Flags = SchedulerFlags.Flag2, OnePacket = true, PersistenceTimeout = 600, PersistenceNetmask = 64,
        }, s.Config);
    }

    [Fact]
    public void Service_FirewallMark_IsTcpWithoutAddress()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w
            .AttrU16(1, 10).AttrU32(5, 0xfffffffe)
            .AttrString(6, "wrr").Attr(7, [2, 0, 0, 0, 255, 255, 255, 255]).AttrU32(8, 0).AttrU32(9, 128)));
        Assert.Equal(ServiceKey.ForFirewallMark(0xfffffffe, IpFamily.V6), s.Key);
        Assert.Null(s.Key.Address);
    }

    [Fact]
    public void Service_WithAPersistenceEngine_KeepsItsName()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 5060).AttrString(11, "sip")));
        Assert.Equal("sip", s.PersistenceEngine);
    }

    [Fact]
    public void Ipv4MaskWithHoles_ReadsAsItsLeadingOnes()
    {
        var s = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 80, netmask: 0xff00ff00)));
        Assert.Equal(8, s.Config.PersistenceNetmask);
    }

    [Fact]
    public void Service_EqualityIgnoresStats()
    {
        var a = Service(KernelReplies.ServiceMessage(1, 1, w => w.ServiceV4(1, 80)));
        var b = a with { Stats = new IpvsStats(9, 9, 9, 9, 9, 9, 9, 9, 9, 9) };
        Assert.Equal(a, b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
        Assert.NotEqual(a, a with { Config = a.Config with { Scheduler = "rr" } });
    }

    [Fact]
    public void Destination_AsTheKernelFillsIt_WithMaxWeightAnd64BitStats()
    {
        var big = 5UL << 33;
        var d = Destination(KernelReplies.DestMessage(1, 1, w => w
            .Attr(1, KernelReplies.Addr4(10, 0, 0, 2)).AttrBe16(2, 8080)
            .AttrU32(3, 2).AttrU32(4, int.MaxValue)
            .AttrU8(13, 1).AttrBe16(14, 6080).AttrU16(15, 3)
            .AttrU32(5, 1000).AttrU32(6, 10)
            .AttrU32(7, 11).AttrU32(8, 12).AttrU32(9, 13)
            .Stats(10, 1, 2, 3, 4, 5)
            .AttrU16(11, 2)
            .Stats64(12, big, big, big, big, big)));
        Assert.Equal(new RealServerKey(IPAddress.Parse("10.0.0.2"), 8080), d.Key);
        Assert.Equal(new RealServerConfig
        {
            Weight = int.MaxValue, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080,
            TunnelFlags = TunnelFlags.Csum | TunnelFlags.RemoteCsum, UpperThreshold = 1000, LowerThreshold = 10,
        }, d.Config);
        Assert.Equal((11u, 12u, 13u), (d.ActiveConnections, d.InactiveConnections, d.PersistentConnections));
        Assert.Equal(big, d.Stats.Connections);
        Assert.Equal(big, d.Stats.OutBytes);
    }

    [Fact]
    public void Destination_FromAnOldKernel_TakesTheServicesFamily_AndDefaultTunnel()
    {
        // Before 3.18 no ADDR_FAMILY; before 5.2 no tunnel attributes; before 4.1 no STATS64.
        var d = Destination(KernelReplies.DestMessage(1, 1, w => w
            .Attr(1, KernelReplies.Addr6("2001:db8::2")).AttrBe16(2, 80)
            .AttrU32(3, 3).AttrU32(4, 100).AttrU32(5, 0).AttrU32(6, 0)
            .AttrU32(7, 0).AttrU32(8, 0).AttrU32(9, 0)
            .Stats(10, 7, 8, 9, 10, 11)), IpFamily.V6);
        Assert.Equal(IPAddress.Parse("2001:db8::2"), d.Key.Address);
        Assert.Equal(new RealServerConfig { Weight = 100, Forward = ForwardMethod.Route }, d.Config);
        Assert.Equal(7UL, d.Stats.Connections);
    }

    [Fact]
    public void Destination_V4InAV6Service_UsesItsOwnFamily()
    {
        var d = Destination(KernelReplies.DestMessage(1, 1, w => w
            .Attr(1, KernelReplies.Addr4(192, 0, 2, 1)).AttrBe16(2, 80).AttrU16(11, 2)
            .AttrU32(3, 2).AttrU32(4, 1).AttrU32(5, 0).AttrU32(6, 0)), IpFamily.V6);
        Assert.Equal(IPAddress.Parse("192.0.2.1"), d.Key.Address);
    }

    [Fact]
    public void Destination_EqualityIgnoresCounters()
    {
        var a = new IpvsDestination(new RealServerKey(IPAddress.Loopback, 80), new RealServerConfig { Weight = 1 });
        var b = a with { ActiveConnections = 5, InactiveConnections = 6, PersistentConnections = 7, Stats = new IpvsStats(1, 1, 1, 1, 1, 1, 1, 1, 1, 1) };
        Assert.Equal(a, b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
    }

    [Fact]
    public void Info_And_Timeouts()
    {
        var info = new Wire().Message(KernelReplies.Family, 0, 1, 1).Genl(14).AttrU32(1, 0x010201).AttrU32(2, 4096).End(message: true).ToArray();
        var reader = new NetlinkMessageReader(info);
        reader.TryRead(out var m);
        var decoded = IpvsCodec.DecodeInfo(m);
        Assert.Equal(new IpvsInfo(0x010201, 4096), decoded);
        Assert.Equal("1.2.1", decoded.VersionText);

        var config = new Wire().Message(KernelReplies.Family, 0, 1, 1).Genl(12).AttrU32(4, 900).AttrU32(5, 120).AttrU32(6, 300).End(message: true).ToArray();
        reader = new NetlinkMessageReader(config);
        reader.TryRead(out m);
        Assert.Equal(new IpvsTimeouts(TimeSpan.FromSeconds(900), TimeSpan.FromSeconds(120), TimeSpan.FromSeconds(300)), IpvsCodec.DecodeTimeouts(m));
    }

    private static readonly Dictionary<string, Func<Wire, Wire>> MalformedServiceBodies = new()
    {
        { "no address family", w => w.AttrU16(2, 6).Attr(3, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(4, 80).AttrString(6, "rr") },
        { "unknown address family", w => w.AttrU16(1, 7).AttrU32(5, 1).AttrString(6, "rr") },
        { "AF as u32", w => w.AttrU32(1, 2).AttrU32(5, 1).AttrString(6, "rr") },
        { "address of 5 bytes", w => w.AttrU16(1, 2).AttrU16(2, 6).Attr(3, 1, 2, 3, 4, 5).AttrBe16(4, 80).AttrString(6, "rr") },
        { "IPv6 address of 4 bytes", w => w.AttrU16(1, 10).AttrU16(2, 6).Attr(3, 1, 2, 3, 4).AttrBe16(4, 80).AttrString(6, "rr") },
        { "port as u32", w => w.AttrU16(1, 2).AttrU16(2, 6).Attr(3, KernelReplies.Addr4(1, 2, 3, 4)).AttrU32(4, 80).AttrString(6, "rr") },
        { "no port", w => w.AttrU16(1, 2).AttrU16(2, 6).Attr(3, KernelReplies.Addr4(1, 2, 3, 4)).AttrString(6, "rr") },
        { "protocol 50", w => w.AttrU16(1, 2).AttrU16(2, 50).Attr(3, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(4, 80).AttrString(6, "rr") },
        { "no scheduler", w => w.AttrU16(1, 2).AttrU32(5, 1) },
        { "flags of 4 bytes", w => w.AttrU16(1, 2).AttrU32(5, 1).AttrString(6, "rr").AttrU32(7, 1) },
        { "netmask of 2 bytes", w => w.AttrU16(1, 2).AttrU32(5, 1).AttrString(6, "rr").AttrU16(9, 1) },
        { "IPv6 prefix 129", w => w.AttrU16(1, 10).AttrU32(5, 1).AttrString(6, "rr").AttrU32(9, 129) },
        { "stats counter as u16", w => w.AttrU16(1, 2).AttrU32(5, 1).AttrString(6, "rr").Nest(12).AttrU16(1, 1).End() },
        { "stats nest with a broken length", w => w.AttrU16(1, 2).AttrU32(5, 1).AttrString(6, "rr").Attr(12, 0xff, 0, 1, 0) },
    };

    public static TheoryData<string> MalformedServices => [.. MalformedServiceBodies.Keys];

    public static TheoryData<string> MalformedDestinations => [.. MalformedDestinationBodies.Keys];

    [Theory]
    [MemberData(nameof(MalformedServices))]
    public void MalformedService_RaisesDecodeException(string what)
    {
        var e = Assert.Throws<NetlinkDecodeException>(() => Service(KernelReplies.ServiceMessage(1, 1, MalformedServiceBodies[what])));
        Assert.False(string.IsNullOrEmpty(e.Message));
    }

    private static readonly Dictionary<string, Func<Wire, Wire>> MalformedDestinationBodies = new()
    {
        { "weight as u16 (the moby/ipvs mistake)", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 3).AttrU16(4, 1) },
        { "weight above int.MaxValue", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 3).AttrU32(4, 0x80000000) },
        { "forwarding method LOCALNODE", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 1) },
        { "no forwarding method", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80) },
        { "tunnel type 3", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 2).AttrU8(13, 3) },
        { "tunnel type as u16", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 2).AttrU16(13, 1) },
        { "no address", w => w.AttrBe16(2, 80).AttrU32(3, 3) },
        { "address family 3", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 3).AttrU16(11, 3) },
        { "active connections as u64", w => w.Attr(1, KernelReplies.Addr4(1, 2, 3, 4)).AttrBe16(2, 80).AttrU32(3, 3).AttrU64(7, 1) },
    };

    [Theory]
    [MemberData(nameof(MalformedDestinations))]
    public void MalformedDestination_RaisesDecodeException(string what)
    {
        var e = Assert.Throws<NetlinkDecodeException>(() => Destination(KernelReplies.DestMessage(1, 1, MalformedDestinationBodies[what])));
        Assert.False(string.IsNullOrEmpty(e.Message));
    }

    [Fact]
    public void ServiceMessageWithTheWrongCommand_RaisesDecodeException()
    {
        var bytes = new Wire().Message(KernelReplies.Family, 2, 1, 1).Genl(5).Nest(1).ServiceV4(1, 80).End().End(message: true).ToArray();
        Assert.Throws<NetlinkDecodeException>(() => Service(bytes));
    }

    [Fact]
    public void ServiceMessageWithoutTheServiceNest_RaisesDecodeException()
    {
        var bytes = new Wire().Message(KernelReplies.Family, 2, 1, 1).Genl(1).End(message: true).ToArray();
        Assert.Throws<NetlinkDecodeException>(() => Service(bytes));
    }
}
