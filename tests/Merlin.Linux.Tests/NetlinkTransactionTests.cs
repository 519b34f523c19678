namespace Merlin.Linux.Tests;

/// <summary>
/// <see cref="NetlinkClient.ExecuteTransaction"/> against a scripted kernel: an nfnetlink batch goes in one
/// datagram, numbered here, and its answers are read up to the acknowledgement it asked for.
/// </summary>
public class NetlinkTransactionTests
{
    /// <summary>BATCH_BEGIN, two nf_tables messages (the last asks for an ACK), BATCH_END, as the nftables dataplane writes them.</summary>
    private static NetlinkBuffer Batch()
    {
        var b = new NetlinkBuffer();
        var w = new NetlinkWriter(b);
        Control(b, 0x10);
        var first = w.BeginMessage(0x0a00, NetlinkFlags.Request | NetlinkFlags.Create);
        w.WriteNetfilterHeader(5, 0);
        w.WriteString(1, "merlin");
        w.EndMessage(first);
        var second = w.BeginMessage(0x0a09, NetlinkFlags.Request | NetlinkFlags.Create | NetlinkFlags.Ack);
        w.WriteNetfilterHeader(5, 0);
        w.WriteString(1, "merlin");
        w.WriteString(2, "d1");
        w.EndMessage(second);
        Control(b, 0x11);
        return b;
    }

    private static void Control(NetlinkBuffer b, ushort type)
    {
        var w = new NetlinkWriter(b);
        var m = w.BeginMessage(type, NetlinkFlags.Request);
        w.WriteNetfilterHeader(0, 10);
        w.EndMessage(m);
    }

    [Fact]
    public void ATransaction_IsOneDatagram_NumberedConsecutively_WithItsFlagsAsWritten_ByteForByte()
    {
        var kernel = new FakeKernel();
        using var client = new NetlinkClient(() => kernel);
        using var batch = Batch();

        client.ExecuteTransaction(batch, type => $"message {type:x4}", TestContext.Current.CancellationToken);

        var datagram = Assert.Single(kernel.Datagrams);
        var seq = kernel.Messages[0].Sequence;
        string Header(int length, string type, string flags, uint s) =>
            $"{length:x2}000000{type}{flags}{Convert.ToHexStringLower(BitConverter.GetBytes(s))}{Convert.ToHexStringLower(BitConverter.GetBytes(kernel.PortId))}";
        Assert.Equal(string.Concat(
            Header(20, "1000", "0100", seq), "0000000a",
            Header(32, "000a", "0104", seq + 1), "05000000", "0b000100", "6d65726c696e0000",
            Header(40, "090a", "0504", seq + 2), "05000000", "0b000100", "6d65726c696e0000", "07000200", "64310000",
            Header(20, "1100", "0100", seq + 3), "0000000a"), Convert.ToHexStringLower(datagram));
    }

    [Fact]
    public void AnEarlierMessagesError_FailsTheTransaction_NamedByItsType_AndLeavesNothingForTheNextRequest()
    {
        var kernel = new FakeKernel();
        using var client = new NetlinkClient(() => kernel);
        // The kernel refuses the NEWTABLE (second message) and still answers the NEWSET's ACK request.
        kernel.Respond = m => m.Type == 0x0a00 ? [Wire.Error(m.Sequence, m.PortId, Errno.EEXIST, m.Type, "exists").ToArray()] : FakeKernel.Ack(m, 0);
        using var batch = Batch();

        var e = Assert.Throws<NetlinkException>(() => client.ExecuteTransaction(batch, type => $"nf_tables {type:x4}", TestContext.Current.CancellationToken));

        Assert.Equal(Errno.EEXIST, e.Errno);
        Assert.Equal("nf_tables 0a00", e.Request);
        Assert.Equal("exists", e.KernelMessage);
        kernel.Respond = m => FakeKernel.Ack(m, 0);
        using var next = Batch();
        client.ExecuteTransaction(next, type => "next", TestContext.Current.CancellationToken);   // no answer of the first is taken for one of this
        Assert.Equal(0, client.StaleMessages);
    }

    [Fact]
    public void AnErrorAfterWhichTheAckNeverComes_StillFails_WithoutWaitingForIt()
    {
        var kernel = new FakeKernel();
        using var client = new NetlinkClient(() => kernel);
        // A refused commit: answered against BATCH_BEGIN, and nothing else.
        kernel.Respond = m => m.Type == 0x10 ? [Wire.Error(m.Sequence, m.PortId, Errno.EINVAL, m.Type).ToArray()] : [];
        using var batch = Batch();

        var e = Assert.Throws<NetlinkException>(() => client.ExecuteTransaction(batch, type => type == 0x10 ? "nf_tables transaction" : "?", TestContext.Current.CancellationToken));

        Assert.Equal((Errno.EINVAL, "nf_tables transaction"), (e.Errno, e.Request));
        Assert.Equal(0, client.SocketResets);
    }

    [Fact]
    public void ATransactionWithoutAnAckRequest_IsRefusedBeforeSending()
    {
        var kernel = new FakeKernel();
        using var client = new NetlinkClient(() => kernel);
        using var b = new NetlinkBuffer();
        var w = new NetlinkWriter(b);
        var m = w.BeginMessage(0x10, NetlinkFlags.Request);
        w.WriteNetfilterHeader(0, 10);
        w.EndMessage(m);

        Assert.Throws<ArgumentException>(() => client.ExecuteTransaction(b, _ => "", TestContext.Current.CancellationToken));
        Assert.Empty(kernel.Datagrams);
    }
}
