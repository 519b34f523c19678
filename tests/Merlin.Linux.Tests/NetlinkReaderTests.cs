namespace Merlin.Linux.Tests;

public class NetlinkReaderTests
{
    private static NetlinkDecodeException Malformed(byte[] bytes, Action<byte[]> read)
    {
        try
        {
            read(bytes);
        }
        catch (NetlinkDecodeException e)
        {
            return e;
        }
        Assert.Fail("expected NetlinkDecodeException");
        return null!;
    }

    private static int CountMessages(byte[] bytes)
    {
        var reader = new NetlinkMessageReader(bytes);
        var n = 0;
        while (reader.TryRead(out _)) n++;
        return n;
    }

    [Fact]
    public void Message_HeaderFieldsAndPayload_AreRead()
    {
        var bytes = new Wire().Message(0x1c, 0x2, 7, 4242).Genl(1).AttrU32(5, 99).End(message: true).ToArray();
        var reader = new NetlinkMessageReader(bytes);
        Assert.True(reader.TryRead(out var m));
        Assert.Equal(0x1c, m.Type);
        Assert.Equal(NetlinkFlags.Multi, m.Flags);
        Assert.Equal(7u, m.Sequence);
        Assert.Equal(4242u, m.PortId);
        var g = m.ReadGeneric();
        Assert.Equal(1, g.Command);
        var attributes = g.Attributes;
        Assert.True(attributes.MoveNext());
        Assert.Equal(5, attributes.Current.Type);
        Assert.Equal(99u, attributes.Current.GetUInt32());
        Assert.False(attributes.MoveNext());
        Assert.False(reader.TryRead(out _));
    }

    [Fact]
    public void SeveralMessagesInOneDatagram_AreAllRead() =>
        Assert.Equal(3, CountMessages([.. Wire.Error(1, 9, 0).ToArray(), .. Wire.Error(2, 9, 17).ToArray(), .. Wire.Done(3, 9).ToArray()]));

    [Fact]
    public void LastMessage_MayOmitItsAlignmentPadding()
    {
        // A 21-byte message: the reader must not demand the 3 padding bytes that would follow.
        var bytes = new Wire().Message(0x10, 0, 1, 1).Raw(1, 2, 3, 4, 5).End(message: true).ToArray();
        Assert.Equal(21, bytes.Length);
        Assert.Equal(1, CountMessages(bytes));
    }

    [Fact]
    public void Ack_IsErrnoZero()
    {
        var reader = new NetlinkMessageReader(Wire.Error(5, 1, 0).ToArray());
        Assert.True(reader.TryRead(out var m));
        Assert.True(m.IsError);
        var e = m.ReadError();
        Assert.True(e.IsAck);
        Assert.Equal(5u, e.RequestSequence);
    }

    [Fact]
    public void Error_CarriesPositiveErrno_AndEchoedRequest()
    {
        var reader = new NetlinkMessageReader(Wire.Error(5, 1, Errno.EEXIST, requestType: 0x1d).ToArray());
        Assert.True(reader.TryRead(out var m));
        var e = m.ReadError();
        Assert.Equal(17, e.Errno);
        Assert.Equal(0x1d, e.RequestType);
        Assert.Null(e.KernelMessage);
    }

    [Fact]
    public void Error_WithExtendedAck_CarriesTheKernelsMessage()
    {
        var reader = new NetlinkMessageReader(Wire.Error(5, 1, Errno.EINVAL, extack: "Attribute failed policy validation").ToArray());
        Assert.True(reader.TryRead(out var m));
        Assert.Equal("Attribute failed policy validation", m.ReadError().KernelMessage);
    }

    [Fact]
    public void Error_NotCapped_SkipsTheEchoedRequestPayloadToReachTheTlvs()
    {
        // flags NLM_F_ACK_TLVS only: the whole 24-byte request is echoed, then the TLVs.
        var bytes = new Wire().Message(2, 0x200, 5, 1).I32(-22)
            .U32(24).U16(0x20).U16(5).U32(5).U32(1).Raw(1, 2, 3, 4, 5, 6, 7, 8)
            .AttrString(1, "bad weight").End(message: true).ToArray();
        var reader = new NetlinkMessageReader(bytes);
        Assert.True(reader.TryRead(out var m));
        Assert.Equal("bad weight", m.ReadError().KernelMessage);
    }

    [Fact]
    public void Error_EchoingMoreThanItCarries_IsMalformed()
    {
        var bytes = new Wire().Message(2, 0x200, 5, 1).I32(-22).U32(4000).U16(0x20).U16(5).U32(5).U32(1).End(message: true).ToArray();
        Malformed(bytes, b => { var r = new NetlinkMessageReader(b); r.TryRead(out var m); m.ReadError(); });
    }

    [Theory]
    [InlineData(1)]           // positive: not an errno
    [InlineData(-4096)]       // below -MAX_ERRNO
    [InlineData(int.MinValue)]
    public void Error_WithAnImpossibleCode_IsMalformed(int code)
    {
        var bytes = new Wire().Message(2, 0x100, 5, 1).I32(code).U32(32).U16(0x10).U16(5).U32(5).U32(1).End(message: true).ToArray();
        Malformed(bytes, b => { var r = new NetlinkMessageReader(b); r.TryRead(out var m); m.ReadError(); });
    }

    [Fact]
    public void Error_TooShortForTheEchoedHeader_IsMalformed()
    {
        var bytes = new Wire().Message(2, 0, 5, 1).I32(-1).End(message: true).ToArray();
        Malformed(bytes, b => { var r = new NetlinkMessageReader(b); r.TryRead(out var m); m.ReadError(); });
    }

    [Fact]
    public void Done_CarriesTheDumpsErrno()
    {
        var reader = new NetlinkMessageReader(Wire.Done(3, 1, Errno.EBUSY).ToArray());
        Assert.True(reader.TryRead(out var m));
        Assert.True(m.IsDone);
        Assert.Equal(Errno.EBUSY, m.ReadDoneErrno());
    }

    [Fact]
    public void HeaderShorterThan16Bytes_IsMalformed() =>
        Malformed(Wire.Hex("10000000 1000 0000 01000000"), b => CountMessages(b));

    [Fact]
    public void MessageLengthBelowHeaderSize_IsMalformed() =>
        Malformed(Wire.Hex("0f000000 1000 0000 01000000 00000000"), b => CountMessages(b));

    [Fact]
    public void MessageLengthPastTheData_IsMalformed() =>
        Malformed(Wire.Hex("14000000 1000 0000 01000000 00000000"), b => CountMessages(b));

    [Fact]
    public void HugeMessageLength_IsMalformed_NotAnOverflow() =>
        Malformed(Wire.Hex("ffffffff 1000 0000 01000000 00000000"), b => CountMessages(b));

    [Fact]
    public void StrayBytesAfterAMessage_AreMalformed() =>
        Malformed([.. Wire.Done(1, 1).ToArray(), 0, 0, 0, 0, 0], b => CountMessages(b));

    [Fact]
    public void AttributeLengthBelowHeader_IsMalformed() =>
        Malformed(Wire.Hex("0300 0100 00000000"), b => { foreach (var _ in new AttributeReader(b)) { } });

    [Fact]
    public void AttributeLengthPastTheData_IsMalformed() =>
        Malformed(Wire.Hex("0900 0100 01020304"), b => { foreach (var _ in new AttributeReader(b)) { } });

    [Fact]
    public void StrayBytesWhereAnAttributeShouldBe_AreMalformed() =>
        Malformed(Wire.Hex("0800 0100 01020304 0000"), b => { foreach (var _ in new AttributeReader(b)) { } });

    [Fact]
    public void NestedAttributeWithBadInnerLength_IsMalformed() =>
        Malformed(Wire.Hex("0c00 0180 0900 0100 01020304"), b =>
        {
            foreach (var a in new AttributeReader(b)) foreach (var _ in a.GetAttributes()) { }
        });

    [Theory]
    [InlineData("0500 0100 01000000", 2)] // u8 where a u16 is asked
    [InlineData("0600 0100 0100 0000", 4)] // u16 where a u32 is asked
    [InlineData("0800 0100 01000000", 8)] // u32 where a u64 is asked
    [InlineData("0c00 0100 0100000000000000", 4)] // u64 where a u32 is asked
    [InlineData("0800 0100 01000000", 1)] // u32 where a u8 is asked
    public void FixedWidthGetter_OnAnotherWidth_IsMalformed(string hex, int width) =>
        Malformed(Wire.Hex(hex), b =>
        {
            foreach (var a in new AttributeReader(b))
            {
                _ = width switch { 1 => a.GetUInt8(), 2 => a.GetUInt16(), 4 => a.GetUInt32(), _ => (ulong)a.GetUInt64() };
            }
        });

    [Fact]
    public void Getters_ReadEachWidth()
    {
        var bytes = new Wire().AttrU8(1, 0xfe).AttrU16(2, 0xfedc).AttrU32(3, 0xfedcba98).AttrU64(4, 0xfedcba9876543210)
            .AttrBe16(5, 443).Attr(6, 0xff, 0xff, 0xff, 0).AttrString(7, "sh").Attr(8, (byte)'r', (byte)'r').ToArray();
        var r = new AttributeReader(bytes);
        r.MoveNext(); Assert.Equal(0xfe, r.Current.GetUInt8());
        r.MoveNext(); Assert.Equal(0xfedc, r.Current.GetUInt16());
        r.MoveNext(); Assert.Equal(0xfedcba98u, r.Current.GetUInt32());
        r.MoveNext(); Assert.Equal(0xfedcba9876543210ul, r.Current.GetUInt64());
        r.MoveNext(); Assert.Equal(443, r.Current.GetUInt16BigEndian());
        r.MoveNext(); Assert.Equal(0xffffff00u, r.Current.GetUInt32BigEndian());
        r.MoveNext(); Assert.Equal("sh", r.Current.GetString());
        r.MoveNext(); Assert.Equal("rr", r.Current.GetString()); // NLA_STRING without a NUL
        Assert.False(r.MoveNext());
    }

    [Fact]
    public void TypeFlags_AreMaskedOff_AndNestedFlagReported()
    {
        var r = new AttributeReader(Wire.Hex("0400 0380 0400 0340"));
        r.MoveNext();
        Assert.Equal(3, r.Current.Type);
        Assert.True(r.Current.HasNestedFlag);
        r.MoveNext();
        Assert.Equal(3, r.Current.Type);
        Assert.False(r.Current.HasNestedFlag);
    }

    [Fact]
    public void StringThatIsNotUtf8_IsMalformed() =>
        Malformed(new Wire().Attr(1, 0xc3, 0x28, 0).ToArray(), b => { foreach (var a in new AttributeReader(b)) a.GetString(); });

    [Fact]
    public void GenericHeaderMissing_IsMalformed() =>
        Malformed(new Wire().Message(0x10, 0, 1, 1).Raw(3, 2).End(message: true).ToArray(),
            b => { var r = new NetlinkMessageReader(b); r.TryRead(out var m); m.ReadGeneric(); });
}
