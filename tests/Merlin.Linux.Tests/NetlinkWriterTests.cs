namespace Merlin.Linux.Tests;

public class NetlinkWriterTests
{
    private static byte[] Write(Action<NetlinkBuffer> write)
    {
        using var buffer = new NetlinkBuffer(16);
        write(buffer);
        return buffer.WrittenSpan.ToArray();
    }

    private static void AssertBytes(string expectedHex, byte[] actual) =>
        Assert.Equal(Convert.ToHexString(Wire.Hex(expectedHex)), Convert.ToHexString(actual));

    [Fact]
    public void Header_IsLengthTypeFlagsSequencePortId_InHostOrder() =>
        AssertBytes("10000000 3412 0500 04030201 0d0c0b0a", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var m = w.BeginMessage(0x1234, NetlinkFlags.Request | NetlinkFlags.Ack, 0x01020304, 0x0a0b0c0d);
            w.EndMessage(m);
        }));

    [Fact]
    public void GenericHeader_IsCommandVersionAndTwoZeroBytes() =>
        AssertBytes("14000000 1000 0100 00000000 00000000 03020000", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var m = w.BeginMessage(0x10, NetlinkFlags.Request);
            w.WriteGenericHeader(3, 2);
            w.EndMessage(m);
        }));

    [Fact]
    public void NetfilterHeader_IsFamilyVersionZeroAndResourceIdInNetworkOrder() =>
        AssertBytes("14000000 1000 0100 00000000 00000000 05 00 000a", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var m = w.BeginMessage(0x10, NetlinkFlags.Request);
            w.WriteNetfilterHeader(5, 10);
            w.EndMessage(m);
        }));

    [Fact]
    public void AddFlags_SetsFlagsOfAMessageWrittenBefore_KeepingTheOthers() =>
        AssertBytes("10000000 0100 0106 00000000 00000000 10000000 0200 0100 00000000 00000000", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var first = w.BeginMessage(1, NetlinkFlags.Request | NetlinkFlags.Create);
            w.EndMessage(first);
            var second = w.BeginMessage(2, NetlinkFlags.Request);
            w.EndMessage(second);
            w.AddFlags(first, NetlinkFlags.Exclusive);
        }));

    [Fact]
    public void UInt8_IsPaddedToFourBytes_LengthExcludesPadding() =>
        AssertBytes("0500 0700 ab000000", Write(b => new NetlinkWriter(b).WriteUInt8(7, 0xab)));

    [Fact]
    public void UInt16_IsHostOrder_PaddedToFourBytes() =>
        AssertBytes("0600 0200 3412 0000", Write(b => new NetlinkWriter(b).WriteUInt16(2, 0x1234)));

    [Fact]
    public void UInt32_NeedsNoPadding() =>
        AssertBytes("0800 0300 efbeadde", Write(b => new NetlinkWriter(b).WriteUInt32(3, 0xdeadbeef)));

    [Fact]
    public void UInt64_IsHostOrder() =>
        AssertBytes("0c00 0400 0807060504030201", Write(b => new NetlinkWriter(b).WriteUInt64(4, 0x0102030405060708)));

    [Fact]
    public void BigEndian16_IsNetworkOrder() =>
        AssertBytes("0600 0500 0050 0000", Write(b => new NetlinkWriter(b).WriteUInt16BigEndian(5, 80)));

    [Fact]
    public void BigEndian32_IsNetworkOrder() =>
        AssertBytes("0800 0900 ffffff00", Write(b => new NetlinkWriter(b).WriteUInt32BigEndian(9, 0xffffff00)));

    [Theory]
    [InlineData("wlc", "0800 0600 776c6300")]          // 3 chars + NUL = 4: no padding
    [InlineData("mh", "0700 0600 6d680000")]           // 2 + NUL = 3: one byte of padding
    [InlineData("", "0500 0600 00000000")]             // just the NUL
    [InlineData("IPVS", "0900 0600 49505653 00000000")] // 4 + NUL = 5: three bytes of padding
    public void String_HasNulTerminator_CountedInLength_ThenPadding(string value, string hex) =>
        AssertBytes(hex, Write(b => new NetlinkWriter(b).WriteString(6, value)));

    [Fact]
    public void Flag_IsAHeaderWithoutPayload() =>
        AssertBytes("0400 0800", Write(b => new NetlinkWriter(b).WriteFlag(8)));

    [Fact]
    public void Bytes_ArePaddedLikeAnyAttribute() =>
        AssertBytes("0700 0100 010203 00", Write(b => new NetlinkWriter(b).WriteBytes(1, [1, 2, 3])));

    [Fact]
    public void Nested_GetsNestedFlag_AndLengthBackFilledOverPaddedChildren() =>
        AssertBytes("1400 0180  0600 0100 0200 0000  0500 0200 01 000000", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var n = w.BeginNested(1);
            w.WriteUInt16(1, 2);
            w.WriteUInt8(2, 1);
            w.EndNested(n);
        }));

    [Fact]
    public void NestedInsideNested_BothLengthsBackFilled() =>
        AssertBytes("1000 0180  0c00 0280  0800 0300 2a000000", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var outer = w.BeginNested(1);
            var inner = w.BeginNested(2);
            w.WriteUInt32(3, 42);
            w.EndNested(inner);
            w.EndNested(outer);
        }));

    [Fact]
    public void EmptyNested_IsJustItsHeader() =>
        AssertBytes("0400 0380", Write(b =>
        {
            var w = new NetlinkWriter(b);
            w.EndNested(w.BeginNested(3));
        }));

    [Fact]
    public void MessageLength_IncludesGenlHeaderAndPaddedAttributes() =>
        // The controller request for "IPVS": 16 + 4 + 12 = 32 bytes.
        AssertBytes("20000000 1000 0100 07000000 09000000  03020000  0900 0200 49505653 00000000", Write(b =>
        {
            var w = new NetlinkWriter(b);
            var m = w.BeginMessage(0x10, NetlinkFlags.Request, 7, 9);
            w.WriteGenericHeader(3, 2);
            w.WriteString(2, "IPVS");
            w.EndMessage(m);
        }));

    [Fact]
    public void TwoMessages_SitBackToBack_EachWithItsOwnLength() =>
        AssertBytes("14000000 1000 0100 01000000 00000000 03020000 1c000000 1000 0100 02000000 00000000 03020000 0800 0100 10000000",
            Write(b =>
            {
                var w = new NetlinkWriter(b);
                var m1 = w.BeginMessage(0x10, NetlinkFlags.Request, 1);
                w.WriteGenericHeader(3, 2);
                w.EndMessage(m1);
                var m2 = w.BeginMessage(0x10, NetlinkFlags.Request, 2);
                w.WriteGenericHeader(3, 2);
                w.WriteUInt32(1, 16);
                w.EndMessage(m2);
            }));

    [Fact]
    public void Padding_IsZeroedEvenOverReusedBytes()
    {
        using var buffer = new NetlinkBuffer(16);
        var w = new NetlinkWriter(buffer);
        w.WriteUInt64(1, ulong.MaxValue);
        buffer.Clear();
        w = new NetlinkWriter(buffer);
        w.WriteUInt8(2, 0xff);
        AssertBytes("0500 0200 ff000000", buffer.WrittenSpan.ToArray());
    }

    [Fact]
    public void Buffer_GrowsAndKeepsWhatWasWritten()
    {
        using var buffer = new NetlinkBuffer(16);
        var w = new NetlinkWriter(buffer);
        for (uint i = 0; i < 5000; i++) w.WriteUInt32(1, i);
        Assert.Equal(5000 * 8, buffer.Length);
        var i2 = 0u;
        foreach (var a in new AttributeReader(buffer.WrittenSpan)) Assert.Equal(i2++, a.GetUInt32());
    }

    [Fact]
    public void LargestAttribute_Fits_OneByteMore_IsRejected()
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        w.WriteBytes(1, new byte[ushort.MaxValue - 4]);
        Assert.Equal(Netlink.Align(ushort.MaxValue), buffer.Length);
        var caught = false;
        try { new NetlinkWriter(buffer).WriteBytes(1, new byte[ushort.MaxValue - 3]); }
        catch (ArgumentOutOfRangeException) { caught = true; }
        Assert.True(caught);
    }

    [Fact]
    public void NestedLongerThan64KiB_IsRejected()
    {
        using var buffer = new NetlinkBuffer();
        var caught = false;
        var w = new NetlinkWriter(buffer);
        var n = w.BeginNested(1);
        for (var i = 0; i < 9000; i++) w.WriteUInt32(2, 0);
        try { w.EndNested(n); }
        catch (ArgumentOutOfRangeException) { caught = true; }
        Assert.True(caught);
    }

    [Fact]
    public void Truncate_DropsAHalfWrittenMessage()
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        w.WriteUInt32(1, 1);
        var mark = buffer.Length;
        w.WriteUInt32(2, 2);
        buffer.Truncate(mark);
        AssertBytes("0800 0100 01000000", buffer.WrittenSpan.ToArray());
    }
}
