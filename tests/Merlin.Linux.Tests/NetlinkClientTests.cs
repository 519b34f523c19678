namespace Merlin.Linux.Tests;

/// <summary>The request loop against a scripted kernel: flags, sequence matching, dumps, errors, batches, timeouts.</summary>
public class NetlinkClientTests
{
    private static (NetlinkClient Client, List<FakeKernel> Kernels) Open()
    {
        var kernels = new List<FakeKernel>();
        var client = new NetlinkClient(() =>
        {
            var k = new FakeKernel((uint)(4242 + kernels.Count));
            kernels.Add(k);
            return k;
        });
        return (client, kernels);
    }

    private static NetlinkBuffer Request(ushort type = 0x20, byte command = 1)
    {
        var b = new NetlinkBuffer();
        var w = new NetlinkWriter(b);
        var m = w.BeginMessage(type, NetlinkFlags.Request);
        w.WriteGenericHeader(command, 1);
        w.WriteUInt32(1, 7);
        w.EndMessage(m);
        return b;
    }

    private static byte[] Reply(uint seq, uint pid, uint value, ushort flags = 0) =>
        new Wire().Message(0x20, flags, seq, pid).Genl(1).AttrU32(1, value).End(message: true).ToArray();

    private static uint Value(NetlinkMessage m)
    {
        var a = m.ReadGeneric().Attributes;
        a.MoveNext();
        return a.Current.GetUInt32();
    }

    [Fact]
    public void Execute_StampsRequestAckSequenceAndPortId_FreshSequenceEachTime()
    {
        var (client, kernels) = Open();
        using var _ = client;
        using var request = Request();
        client.Execute(request, "first");
        client.Execute(request, "second");
        var k = kernels.Single();
        Assert.Equal(2, k.Messages.Count);
        Assert.All(k.Messages, m => Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Ack, m.Flags));
        Assert.All(k.Messages, m => Assert.Equal(k.PortId, m.PortId));
        Assert.Equal(k.Messages[0].Sequence + 1, k.Messages[1].Sequence);
    }

    [Fact]
    public void Execute_HandsRepliesToTheHandler_AndReturnsAtTheAck()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m => [Reply(m.Sequence, m.PortId, 11), .. FakeKernel.Ack(m, 0)];
        using var request = Request();
        var seen = new List<uint>();
        client.Execute(request, "get", static (m, list) => list.Add(Value(m)), seen);
        Assert.Equal([11u], seen);
    }

    [Fact]
    public void Execute_ErrorReply_RaisesNetlinkExceptionWithErrnoRequestAndKernelText()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m => [Wire.Error(m.Sequence, m.PortId, Errno.EEXIST, extack: "already there").ToArray()];
        using var request = Request();
        var e = Assert.Throws<NetlinkException>(() => client.Execute(request, "IPVS NEW_SERVICE tcp:10.0.0.1:80"));
        Assert.Equal(Errno.EEXIST, e.Errno);
        Assert.Equal("EEXIST", e.ErrorName);
        Assert.Equal("IPVS NEW_SERVICE tcp:10.0.0.1:80", e.Request);
        Assert.Equal("already there", e.KernelMessage);
        Assert.Equal("IPVS NEW_SERVICE tcp:10.0.0.1:80: EEXIST (File exists): already there", e.Message);
    }

    [Fact]
    public void Execute_IgnoresRepliesForOtherSequencesOrPorts()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m =>
        [
            Wire.Error(m.Sequence - 1, m.PortId, Errno.EEXIST).ToArray(), // an abandoned request's answer
            Reply(m.Sequence, m.PortId + 1, 99),                           // someone else's
            Reply(m.Sequence, m.PortId, 5),
            .. FakeKernel.Ack(m, 0),
        ];
        using var request = Request();
        var seen = new List<uint>();
        client.Execute(request, "get", static (m, list) => list.Add(Value(m)), seen);
        Assert.Equal([5u], seen);
        Assert.Equal(2, client.StaleMessages);
    }

    [Fact]
    public void Dump_FollowsMultipartDatagramsToDone()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m =>
        [
            [.. Reply(m.Sequence, m.PortId, 1, 2), .. Reply(m.Sequence, m.PortId, 2, 2)],
            Reply(m.Sequence, m.PortId, 3, 2),
            [.. Reply(m.Sequence, m.PortId, 4, 2), .. Wire.Done(m.Sequence, m.PortId).ToArray()],
        ];
        using var request = Request();
        var seen = new List<uint>();
        client.Dump(request, "dump", static (m, list) => list.Add(Value(m)), seen, TestContext.Current.CancellationToken);
        Assert.Equal([1u, 2u, 3u, 4u], seen);
        Assert.Equal(NetlinkFlags.Request | NetlinkFlags.Dump, kernels[0].Messages.Single().Flags);
    }

    [Fact]
    public void Dump_DoneWithAnErrno_RaisesIt()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m => [Wire.Done(m.Sequence, m.PortId, Errno.EINVAL).ToArray()];
        using var request = Request();
        var e = Assert.Throws<NetlinkException>(() => client.Dump<object?>(request, "dump", static (_, _) => { }, null, TestContext.Current.CancellationToken));
        Assert.Equal(Errno.EINVAL, e.Errno);
    }

    [Fact]
    public void Dump_WithAMalformedDatagram_ReadsOnToDone_ThenRaisesDecodeException()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = m =>
        [
            Reply(m.Sequence, m.PortId, 1, 2),
            [0x40, 0, 0, 0, 0x20, 0, 2, 0], // a header that claims 64 bytes in 8
            Reply(m.Sequence, m.PortId, 3, 2),
            Wire.Done(m.Sequence, m.PortId).ToArray(),
        ];
        using var request = Request();
        Assert.Throws<NetlinkDecodeException>(() => client.Dump<object?>(request, "dump", static (_, _) => { }, null, TestContext.Current.CancellationToken));
        Assert.Equal(0, client.SocketResets); // read to the end: the transport is still in step
        kernels[0].Respond = m => FakeKernel.Ack(m, 0);
        client.Execute(request, "next");
    }

    [Fact]
    public void NoAnswer_RaisesTimeout_AndReplacesTheTransport()
    {
        var (client, kernels) = Open();
        using var _ = client;
        kernels[0].Respond = _ => [];
        using var request = Request();
        var e = Assert.Throws<NetlinkTimeoutException>(() => client.Execute(request, "IPVS FLUSH"));
        Assert.Equal("IPVS FLUSH", e.Request);
        Assert.Equal(2, kernels.Count);
        Assert.True(kernels[0].Disposed);
        Assert.Same(kernels[1], client.Transport);
        client.Execute(request, "again");
        Assert.Equal(4243u, kernels[1].Messages.Single().PortId);
    }

    [Fact]
    public void Batch_AsksForOneAckPerDatagram_AndMapsErrorsToIndices()
    {
        var (client, kernels) = Open();
        using var _ = client;
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 7; i++)
        {
            var w = new NetlinkWriter(batch);
            var m = w.BeginMessage(0x20, NetlinkFlags.Request);
            w.WriteGenericHeader(1, 1);
            w.WriteUInt32(1, (uint)i);
            w.EndMessage(m);
        }
        // The kernel refuses the messages carrying 1, 2 and 5 (5 is the last of its datagram: its error is the ACK).
        kernels[0].Respond = m => FakeKernel.Ack(m, BitConverter.ToUInt32(m.Bytes, 24) is 1 or 2 or 5 ? Errno.EEXIST : 0);

        var result = client.ExecuteBatch(batch, i => $"op {i}", new NetlinkBatchOptions { MaxMessagesPerSend = 3 }, TestContext.Current.CancellationToken);

        var k = kernels[0];
        Assert.Equal(3, k.Datagrams.Count);
        Assert.Equal(3, result.Sends);
        // Only the last message of each datagram asks for an ACK.
        Assert.Equal([2, 5, 6], k.Messages.Select((m, i) => (m, i)).Where(p => (p.m.Flags & NetlinkFlags.Ack) != 0).Select(p => p.i));
        Assert.Equal(7, k.Messages.Select(m => m.Sequence).Distinct().Count());
        Assert.Equal([1, 2, 5], result.Failures.Select(f => f.Index));
        Assert.Equal("op 5: EEXIST (File exists)", result.Failures[2].Error.Message);
        Assert.False(result.Succeeded);
        Assert.Throws<NetlinkException>(result.ThrowIfFailed);
    }

    [Fact]
    public void Batch_RepliesToGets_AreSkipped()
    {
        var (client, kernels) = Open();
        using var _ = client;
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 4; i++)
        {
            var w = new NetlinkWriter(batch);
            var m = w.BeginMessage(0x20, NetlinkFlags.Request);
            w.WriteGenericHeader(1, 1);
            w.EndMessage(m);
        }
        kernels[0].Respond = m => [Reply(m.Sequence, m.PortId, 1), .. FakeKernel.Ack(m, 0)];
        var result = client.ExecuteBatch(batch, i => $"op {i}", ct: TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded);
        Assert.Equal(1, result.Sends);
    }

    [Fact]
    public void Execute_WithTwoMessagesInTheBuffer_IsRejected()
    {
        var (client, _) = Open();
        using var __ = client;
        using var request = Request();
        var w = new NetlinkWriter(request);
        w.EndMessage(w.BeginMessage(0x20, NetlinkFlags.Request));
        Assert.Throws<ArgumentException>(() => client.Execute(request, "two"));
    }

    [Fact]
    public void Batch_WithAnUnfinishedMessage_IsRejected()
    {
        var (client, _) = Open();
        using var __ = client;
        using var batch = new NetlinkBuffer();
        new NetlinkWriter(batch).BeginMessage(0x20, NetlinkFlags.Request); // never ended: length 0
        Assert.Throws<ArgumentException>(() => client.ExecuteBatch(batch, i => $"op {i}", ct: TestContext.Current.CancellationToken));
    }
}
