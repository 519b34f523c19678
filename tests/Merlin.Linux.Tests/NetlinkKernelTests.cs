using System.Diagnostics;

namespace Merlin.Linux.Tests;

/// <summary>
/// Against the running kernel's generic-netlink controller, which every Linux kernel has: proves the
/// socket, framing, sequence matching, error path, batching and timeouts on the real thing.
/// </summary>
public class NetlinkKernelTests
{
    private static NetlinkClient Open(NetlinkSocketOptions? options = null)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "netlink is Linux only");
        return NetlinkClient.Open(Netlink.ProtocolGeneric, options);
    }

    [Fact]
    public void Socket_IsBoundToAPortIdTheKernelChose()
    {
        using var client = Open();
        Assert.NotEqual(0u, client.Transport.PortId);
    }

    [Fact]
    public void ResolveController_DescribesNlctrl()
    {
        using var client = Open();
        var family = GenericNetlinkFamily.Resolve(client, "nlctrl");
        Assert.Equal("nlctrl", family.Name);
        Assert.Equal(GenericNetlinkController.FamilyId, family.Id);
    }

    [Fact]
    public void ResolveUnknownFamily_RaisesENOENT_NamingTheRequest()
    {
        using var client = Open();
        var e = Assert.Throws<NetlinkException>(() => GenericNetlinkFamily.Resolve(client, "merlin-nothing"));
        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.Equal("ENOENT", e.ErrorName);
        Assert.Contains("\"merlin-nothing\"", e.Message);
        Assert.Contains("ENOENT (No such file or directory)", e.Message);
    }

    [Fact]
    public void RepliesToAnEarlierRequest_AreDroppedBySequence()
    {
        using var client = Open();
        // Leave a reply to some other sequence number queued on the socket.
        using var orphan = new NetlinkBuffer();
        GenericNetlinkFamily.WriteGetFamily(orphan, "nlctrl");
        orphan.WriteUInt16At(6, (ushort)(NetlinkFlags.Request | NetlinkFlags.Ack));
        orphan.WriteUInt32At(8, 0xdead);
        Assert.True(client.Transport.TrySend(orphan.WrittenSpan, "orphan"));

        Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name);
        Assert.True(client.StaleMessages >= 2, $"{client.StaleMessages} stale"); // the orphan's reply and ACK
    }

    [Fact]
    public void Batch_ReportsExactlyTheFailedRequests_WithFewSends()
    {
        using var client = Open();
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 1000; i++) GenericNetlinkFamily.WriteGetFamily(batch, i % 3 == 1 ? "merlin-nothing" : "nlctrl");

        var result = client.ExecuteBatch(batch, i => $"lookup {i}", ct: TestContext.Current.CancellationToken);

        Assert.Equal(1000, result.Count);
        Assert.Equal(4, result.Sends); // 256 per datagram
        Assert.Equal(Enumerable.Range(0, 1000).Where(i => i % 3 == 1), result.Failures.Select(f => f.Index));
        Assert.All(result.Failures, f => Assert.Equal(Errno.ENOENT, f.Error.Errno));
        Assert.Equal("lookup 1: ENOENT (No such file or directory)", result.Failures[0].Error.Message);
        Assert.Equal(0, client.SocketResets);
        // The socket is in step afterwards.
        Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name);
    }

    [Fact]
    public void Batch_OneMessagePerSend_GivesTheSameOutcome()
    {
        using var client = Open();
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 50; i++) GenericNetlinkFamily.WriteGetFamily(batch, i % 2 == 0 ? "merlin-nothing" : "nlctrl");

        var result = client.ExecuteBatch(batch, i => $"lookup {i}", new NetlinkBatchOptions { MaxMessagesPerSend = 1 }, TestContext.Current.CancellationToken);

        Assert.Equal(50, result.Sends);
        Assert.Equal(Enumerable.Range(0, 25).Select(i => 2 * i), result.Failures.Select(f => f.Index));
    }

    [Fact]
    public void Batch_SplitsOnBytesToo()
    {
        using var client = Open();
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 10; i++) GenericNetlinkFamily.WriteGetFamily(batch, "nlctrl"); // 32 bytes each
        var result = client.ExecuteBatch(batch, i => $"lookup {i}", new NetlinkBatchOptions { MaxBytesPerSend = 100 }, TestContext.Current.CancellationToken);
        Assert.Equal(4, result.Sends); // 3 + 3 + 3 + 1
        Assert.True(result.Succeeded);
    }

    [Fact]
    public void Batch_WhoseRepliesOverflowTheReceiveBuffer_RaisesENOBUFS_AndTheClientRecovers()
    {
        // A receive buffer of the kernel's minimum cannot hold 200 error replies: the kernel drops them and
        // says ENOBUFS. The outcome is unknown, so this must be an exception, not a partial result.
        using var client = Open(new NetlinkSocketOptions { ReceiveBufferSize = 1 });
        using var batch = new NetlinkBuffer();
        for (var i = 0; i < 200; i++) GenericNetlinkFamily.WriteGetFamily(batch, "merlin-nothing");

        var e = Assert.Throws<NetlinkException>(() => client.ExecuteBatch(batch, i => $"lookup {i}", new NetlinkBatchOptions { MaxMessagesPerSend = 200 }, TestContext.Current.CancellationToken));

        Assert.Equal(Errno.ENOBUFS, e.Errno);
        Assert.Contains("outcome of these requests is unknown", e.Message);
        Assert.Equal(1, client.SocketResets);
        Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name);
    }

    [Fact]
    public void Receive_WithNothingComing_ReturnsAfterTheTimeout()
    {
        using var client = Open(new NetlinkSocketOptions { ReceiveTimeout = TimeSpan.FromMilliseconds(200) });
        var buffer = new byte[4096];
        var watch = Stopwatch.StartNew();
        Assert.Equal(-1, client.Transport.Receive(buffer, "nothing"));
        Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(150), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public void Dump_OfTheControllersFamilies_EndsAtDone()
    {
        using var client = Open();
        using var request = new NetlinkBuffer();
        var w = new NetlinkWriter(request);
        var m = w.BeginMessage(GenericNetlinkController.FamilyId, NetlinkFlags.Request);
        w.WriteGenericHeader(GenericNetlinkController.CommandGetFamily, GenericNetlinkController.Version);
        w.EndMessage(m);
        var names = new List<string>();
        client.Dump(request, "dump families", static (message, list) => list.Add(GenericNetlinkFamily.Decode(message).Name), names, TestContext.Current.CancellationToken);
        Assert.Contains("nlctrl", names);
        Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name); // in step afterwards
    }

    [Fact]
    public void Dump_WhoseHandlerThrows_StillReadsToDone_ThenRethrows()
    {
        using var client = Open();
        using var request = new NetlinkBuffer();
        var w = new NetlinkWriter(request);
        var m = w.BeginMessage(GenericNetlinkController.FamilyId, NetlinkFlags.Request);
        w.WriteGenericHeader(GenericNetlinkController.CommandGetFamily, GenericNetlinkController.Version);
        w.EndMessage(m);
        Assert.Throws<InvalidOperationException>(() =>
            client.Dump<object?>(request, "dump families", static (_, _) => throw new InvalidOperationException("handler"), null, TestContext.Current.CancellationToken));
        // A second dump works: the first one was read to its end, so the kernel is not still running it (EBUSY).
        var count = new int[1];
        client.Dump(request, "dump families", static (_, c) => c[0]++, count, TestContext.Current.CancellationToken);
        Assert.True(count[0] > 0);
        Assert.Equal(0, client.SocketResets);
    }
}
