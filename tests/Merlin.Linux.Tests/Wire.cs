using System.Buffers.Binary;
using System.Text;

namespace Merlin.Linux.Tests;

/// <summary>
/// Builds netlink bytes the way the kernel lays them out, independently of <see cref="NetlinkWriter"/>, so
/// the reader is tested against hand-built replies and the writer against hand-written bytes.
/// </summary>
internal sealed class Wire
{
    private readonly List<byte> _bytes = [];
    private readonly Stack<int> _open = new();

    /// <summary>Hex digits, with any whitespace between them and "//" comments to the end of a line.</summary>
    public static byte[] Hex(string hex) => Convert.FromHexString(string.Concat(
        hex.Split('\n').Select(line => line.Split("//")[0]).SelectMany(line => line.Where(c => !char.IsWhiteSpace(c)))));

    public int Length => _bytes.Count;

    public byte[] ToArray() => [.. _bytes];

    /// <summary>nlmsghdr whose length is patched by <see cref="End"/>.</summary>
    public Wire Message(ushort type, ushort flags, uint seq, uint pid)
    {
        _open.Push(_bytes.Count);
        U32(0).U16(type).U16(flags).U32(seq).U32(pid);
        return this;
    }

    public Wire Genl(byte cmd, byte version = 1) => Raw(cmd, version, 0, 0);

    /// <summary>Opens an attribute whose payload follows; <see cref="End"/> patches nla_len.</summary>
    public Wire Nest(ushort type)
    {
        _open.Push(_bytes.Count);
        U16(0).U16(type);
        return this;
    }

    /// <summary>Closes the innermost message (u32 length) or nest (u16 length).</summary>
    public Wire End(bool message = false)
    {
        var start = _open.Pop();
        var length = _bytes.Count - start;
        var span = new byte[4];
        if (message) BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)length);
        else BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)length);
        for (var i = 0; i < (message ? 4 : 2); i++) _bytes[start + i] = span[i];
        return this;
    }

    public Wire Attr(ushort type, params byte[] payload)
    {
        U16((ushort)(4 + payload.Length)).U16(type);
        _bytes.AddRange(payload);
        while (_bytes.Count % 4 != 0) _bytes.Add(0);
        return this;
    }

    public Wire AttrU8(ushort type, byte v) => Attr(type, v);
    public Wire AttrU16(ushort type, ushort v) => Attr(type, BitConverter.GetBytes(v));
    public Wire AttrU32(ushort type, uint v) => Attr(type, BitConverter.GetBytes(v));
    public Wire AttrU64(ushort type, ulong v) => Attr(type, BitConverter.GetBytes(v));
    public Wire AttrBe16(ushort type, ushort v) => Attr(type, (byte)(v >> 8), (byte)v);
    public Wire AttrString(ushort type, string v) => Attr(type, [.. Encoding.ASCII.GetBytes(v), 0]);

    public Wire Raw(params byte[] bytes)
    {
        _bytes.AddRange(bytes);
        return this;
    }

    public Wire U16(ushort v) => Raw(BitConverter.GetBytes(v));
    public Wire U32(uint v) => Raw(BitConverter.GetBytes(v));
    public Wire I32(int v) => Raw(BitConverter.GetBytes(v));

    /// <summary>An NLMSG_ERROR for request (seq, pid) with errno (0 = ACK), capped, optionally with an extended-ACK message.</summary>
    public static Wire Error(uint seq, uint pid, int errno, ushort requestType = 0x10, string? extack = null)
    {
        var flags = (ushort)(0x100 | (extack is null ? 0 : 0x200));
        var w = new Wire().Message(2, flags, seq, pid).I32(-errno)
            // the echoed request header (payload capped)
            .U32(32).U16(requestType).U16(5).U32(seq).U32(pid);
        if (extack is not null) w.AttrString(1, extack);
        return w.End(message: true);
    }

    public static Wire Done(uint seq, uint pid, int errno = 0) =>
        new Wire().Message(3, 2, seq, pid).I32(-errno).End(message: true);
}
