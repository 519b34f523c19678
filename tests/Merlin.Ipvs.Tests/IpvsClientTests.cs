using System.Net;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Linux.Tests;

namespace Merlin.Ipvs.Tests;

/// <summary>The IPVS client against a scripted kernel: what it sends, how it reads dumps, how it reports refusals.</summary>
public class IpvsClientTests
{
    private static readonly ServiceKey Tcp80 = IpvsRequestBytesTests.Tcp80;

    /// <summary>A kernel that knows the IPVS family (id 0x22) and answers IPVS requests through <paramref name="ipvs"/>.</summary>
    private static (IpvsClient Client, FakeKernel Kernel) Open(Func<FakeKernel.Sent, IEnumerable<byte[]>>? ipvs = null)
    {
        var kernel = new FakeKernel();
        kernel.Respond = m => m.Type == GenericNetlinkController.FamilyId
            ? [KernelReplies.IpvsFamily(m.Sequence, m.PortId), .. FakeKernel.Ack(m, 0)]
            : ipvs?.Invoke(m) ?? FakeKernel.Ack(m, 0);
        var client = IpvsClient.Open(new NetlinkClient(() => kernel));
        return (client, kernel);
    }

    [Fact]
    public void Open_ResolvesTheIpvsFamily()
    {
        var (client, kernel) = Open();
        using var _ = client;
        Assert.Equal(new GenericNetlinkFamily("IPVS", 0x22, 1, 0, 6), client.Family);
        Assert.Equal(GenericNetlinkController.FamilyId, kernel.Messages.Single().Type);
    }

    [Fact]
    public void Open_OnAKernelWithoutIpvs_RaisesENOENT_AndClosesTheSocket()
    {
        var kernel = new FakeKernel { Respond = m => FakeKernel.Ack(m, Errno.ENOENT) };
        var e = Assert.Throws<NetlinkException>(() => IpvsClient.Open(new NetlinkClient(() => kernel)));
        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.True(kernel.Disposed);
    }

    [Fact]
    public void NewService_SendsTheCodecsBytes_WithRequestAndAck()
    {
        var (client, kernel) = Open();
        using var _ = client;
        var config = new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag1 | SchedulerFlags.Flag2, PersistenceNetmask = 32 };
        client.NewService(Tcp80, config);

        using var expected = new NetlinkBuffer();
        IpvsCodec.WriteService(expected, 0x22, IpvsKernel.CmdNewService, Tcp80, config);
        var sent = kernel.Messages[^1];
        Assert.Equal(Convert.ToHexString(expected.WrittenSpan), sent.Hex);
        Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Ack, sent.Flags);
    }

    [Fact]
    public void Refusal_NamesTheOperation()
    {
        var (client, _) = Open(m => FakeKernel.Ack(m, Errno.EEXIST));
        using var __ = client;
        var e = Assert.Throws<NetlinkException>(() => client.NewService(Tcp80, new ServiceConfig { Scheduler = "rr", PersistenceNetmask = 32 }));
        Assert.Equal("IPVS NEW_SERVICE tcp:10.0.0.1:80: EEXIST (File exists)", e.Message);

        var d = Assert.Throws<NetlinkException>(() => client.DeleteDestination(Tcp80, new RealServerKey(IPAddress.Parse("10.0.0.2"), 80)));
        Assert.Equal("IPVS DEL_DEST 10.0.0.2:80 in tcp:10.0.0.1:80", d.Request);
    }

    [Fact]
    public void GetService_Missing_IsNull()
    {
        var (client, _) = Open(m => FakeKernel.Ack(m, Errno.ESRCH));
        using var __ = client;
        Assert.Null(client.GetService(Tcp80));
    }

    [Fact]
    public void GetService_ReturnsTheKernelsAnswer()
    {
        var (client, kernel) = Open(m => [KernelReplies.ServiceMessage(m.Sequence, m.PortId, w => w.ServiceV4(1, 80), flags: 0), .. FakeKernel.Ack(m, 0)]);
        using var _ = client;
        var s = client.GetService(Tcp80);
        Assert.Equal(new IpvsService(Tcp80, new ServiceConfig { Scheduler = "wlc", PersistenceNetmask = 32 }), s);
        Assert.Equal(IpvsKernel.CmdGetService, kernel.Messages[^1].Command);
    }

    [Fact]
    public void GetServices_ReadsAMultipartDumpOverSeveralDatagrams()
    {
        var (client, kernel) = Open(m =>
        [
            [.. KernelReplies.ServiceMessage(m.Sequence, m.PortId, w => w.ServiceV4(1, 80)),
             .. KernelReplies.ServiceMessage(m.Sequence, m.PortId, w => w.ServiceV4(2, 443, "rr"))],
            [.. KernelReplies.ServiceMessage(m.Sequence, m.PortId, w => w.ServiceV4(3, 8080, "sh", flags: 0x2 | 0x10)),
             .. Wire.Done(m.Sequence, m.PortId).ToArray()],
        ]);
        using var _ = client;

        var services = client.GetServices(TestContext.Current.CancellationToken);

        Assert.Equal(["tcp:10.0.0.1:80 wlc", "tcp:10.0.0.2:443 rr", "tcp:10.0.0.3:8080 sh"], services.Select(s => s.ToString()));
        Assert.Equal(SchedulerFlags.Flag2, services[2].Config.Flags);
        Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Dump, kernel.Messages[^1].Flags);
        Assert.Equal(IpvsKernel.CmdGetService, kernel.Messages[^1].Command);
    }

    [Fact]
    public void GetDestinations_DumpsOneService_ReadingAddressesInItsFamily()
    {
        var v6 = ServiceKey.ForAddress(IPAddress.Parse("2001:db8::1"), 80, Protocol.Tcp);
        var (client, kernel) = Open(m =>
        [
            [.. KernelReplies.DestMessage(m.Sequence, m.PortId, w => w.Attr(1, KernelReplies.Addr6("2001:db8::a")).AttrBe16(2, 80).AttrU32(3, 3).AttrU32(4, 10).AttrU32(5, 0).AttrU32(6, 0)),
             .. KernelReplies.DestMessage(m.Sequence, m.PortId, w => w.Attr(1, KernelReplies.Addr6("2001:db8::b")).AttrBe16(2, 80).AttrU32(3, 3).AttrU32(4, 20).AttrU32(5, 0).AttrU32(6, 0)),
             .. Wire.Done(m.Sequence, m.PortId).ToArray()],
        ]);
        using var _ = client;

        var destinations = client.GetDestinations(v6, TestContext.Current.CancellationToken);

        Assert.Equal([IPAddress.Parse("2001:db8::a"), IPAddress.Parse("2001:db8::b")], destinations.Select(d => d.Key.Address));
        Assert.Equal([10u, 20u], destinations.Select(d => d.Config.Weight));
        using var expected = new NetlinkBuffer();
        IpvsCodec.WriteServiceKeyCommand(expected, 0x22, IpvsKernel.CmdGetDest, v6);
        Assert.Equal(Convert.ToHexString(expected.WrittenSpan), kernel.Messages[^1].Hex);
    }

    [Fact]
    public void InfoAndTimeouts_RoundTripThroughTheKernelsReplies()
    {
        var (client, kernel) = Open(m => m.Command switch
        {
            IpvsKernel.CmdGetInfo => [new Wire().Message(0x22, 0, m.Sequence, m.PortId).Genl(14).AttrU32(1, 0x010201).AttrU32(2, 4096).End(message: true).ToArray(), .. FakeKernel.Ack(m, 0)],
            IpvsKernel.CmdGetConfig => [new Wire().Message(0x22, 0, m.Sequence, m.PortId).Genl(12).AttrU32(4, 900).AttrU32(5, 120).AttrU32(6, 300).End(message: true).ToArray(), .. FakeKernel.Ack(m, 0)],
            _ => FakeKernel.Ack(m, 0),
        });
        using var _ = client;
        Assert.Equal("1.2.1", client.GetInfo().VersionText);
        Assert.Equal(4096u, client.GetInfo().ConnectionTableSize);
        Assert.Equal(TimeSpan.FromSeconds(120), client.GetTimeouts().TcpFin);
        client.SetTimeouts(new IpvsTimeouts(TimeSpan.FromSeconds(60), TimeSpan.Zero, TimeSpan.Zero));
        Assert.Equal(IpvsKernel.CmdSetConfig, kernel.Messages[^1].Command);
        client.Flush();
        Assert.Equal(IpvsKernel.CmdFlush, kernel.Messages[^1].Command);
        client.ZeroCounters(Tcp80);
        Assert.Equal(IpvsKernel.CmdZero, kernel.Messages[^1].Command);
    }

    [Fact]
    public void Batch_SendsManyChangesPerDatagram_AndReportsEachRefusalByPosition()
    {
        // The kernel refuses the service on port 443 (EEXIST) and the destination on port 81 (ESRCH).
        var (client, kernel) = Open(m =>
            FakeKernel.Ack(m, m.Command == IpvsKernel.CmdNewService && m.Bytes.AsSpan().IndexOf(new byte[] { 0x06, 0, 0x04, 0, 0x01, 0xbb }) >= 0 ? Errno.EEXIST
                : m.Command == IpvsKernel.CmdNewDest && m.Bytes.AsSpan().IndexOf(new byte[] { 0x06, 0, 0x02, 0, 0x00, 0x51 }) >= 0 ? Errno.ESRCH : 0));
        using var _ = client;
        using var batch = client.CreateBatch();
        var config = new ServiceConfig { Scheduler = "mh", PersistenceNetmask = 32 };
        var tcp443 = Tcp80 with { Port = 443 };
        batch.NewService(Tcp80, config);                                                                    // 0
        batch.NewService(tcp443, config);                                                                   // 1: EEXIST
        for (var i = 0; i < 600; i++)                                                                       // 2..601
            batch.NewDestination(Tcp80, new RealServerKey(new IPAddress([10, 1, (byte)(i >> 8), (byte)i]), (ushort)(i == 300 ? 81 : 80)), new RealServerConfig { Weight = 1 });
        batch.SetDestination(Tcp80, new RealServerKey(IPAddress.Parse("10.1.0.0"), 80), new RealServerConfig { Weight = 2 });
        batch.DeleteDestination(Tcp80, new RealServerKey(IPAddress.Parse("10.1.0.1"), 80));
        batch.SetService(Tcp80, config with { Scheduler = "rr" });
        batch.DeleteService(tcp443);
        Assert.Equal(606, batch.Count);

        var result = client.Execute(batch, ct: TestContext.Current.CancellationToken);

        Assert.Equal(606, result.Count);
        Assert.Equal(3, result.Sends); // 256 per datagram
        Assert.Equal(3 + 1, kernel.Datagrams.Count); // plus the family lookup
        Assert.Equal([1, 302], result.Failures.Select(f => f.Index));
        Assert.Equal("IPVS NEW_SERVICE tcp:10.0.0.1:443: EEXIST (File exists)", result.Failures[0].Error.Message);
        Assert.Equal("IPVS NEW_DEST 10.1.1.44:81 in tcp:10.0.0.1:80: ESRCH (No such process)", result.Failures[1].Error.Message);
        Assert.Equal(
            [IpvsKernel.CmdSetDest, IpvsKernel.CmdDelDest, IpvsKernel.CmdSetService, IpvsKernel.CmdDelService],
            kernel.Messages.TakeLast(4).Select(m => m.Command));
    }

    [Fact]
    public void Batch_ARequestRejectedWhileWriting_LeavesTheBatchAsItWas()
    {
        var (client, _) = Open();
        using var __ = client;
        using var batch = client.CreateBatch();
        batch.NewService(Tcp80, new ServiceConfig { Scheduler = "rr", PersistenceNetmask = 32 });
        var before = batch.Buffer.WrittenSpan.ToArray();
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            batch.NewDestination(Tcp80, new RealServerKey(IPAddress.Loopback, 80), new RealServerConfig { Weight = uint.MaxValue }));
        Assert.Equal(1, batch.Count);
        Assert.Equal(before, batch.Buffer.WrittenSpan.ToArray());
        Assert.True(client.Execute(batch, ct: TestContext.Current.CancellationToken).Succeeded);
    }

    [Fact]
    public void EmptyBatch_SendsNothing()
    {
        var (client, kernel) = Open();
        using var _ = client;
        using var batch = client.CreateBatch();
        var result = client.Execute(batch, ct: TestContext.Current.CancellationToken);
        Assert.Equal((0, 0), (result.Count, result.Sends));
        Assert.Single(kernel.Datagrams); // only the family lookup
    }
}
