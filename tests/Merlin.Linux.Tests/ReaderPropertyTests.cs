using CsCheck;

namespace Merlin.Linux.Tests;

/// <summary>
/// Whatever bytes arrive, the reader either decodes them or raises <see cref="NetlinkDecodeException"/>:
/// never an IndexOutOfRange, an overflow or any other exception.
/// </summary>
public class ReaderPropertyTests
{
    /// <summary>Reads a datagram as deeply as a consumer could: every message, every attribute with every getter, nests to depth 4.</summary>
    internal static void ReadEverything(ReadOnlySpan<byte> datagram)
    {
        var reader = new NetlinkMessageReader(datagram);
        while (reader.TryRead(out var message))
        {
            if (message.IsError) message.ReadError();
            else if (message.IsDone) message.ReadDoneErrno();
            else Walk(message.ReadGeneric().AttributeBytes, 0);
        }
    }

    private static void Walk(ReadOnlySpan<byte> attributes, int depth)
    {
        foreach (var a in new AttributeReader(attributes))
        {
            switch (a.Payload.Length)
            {
                case 1: a.GetUInt8(); break;
                case 2: a.GetUInt16(); a.GetUInt16BigEndian(); break;
                case 4: a.GetUInt32(); a.GetUInt32BigEndian(); a.GetInt32(); break;
                case 8: a.GetUInt64(); break;
            }
            try { a.GetUInt32(); } catch (NetlinkDecodeException) { }
            try { a.GetString(); } catch (NetlinkDecodeException) { }
            if (depth < 4)
            {
                try { Walk(a.Payload, depth + 1); } catch (NetlinkDecodeException) { }
            }
        }
    }

    private static void DecodesOrRaisesDecodeException(byte[] bytes)
    {
        try
        {
            ReadEverything(bytes);
        }
        catch (NetlinkDecodeException)
        {
        }
    }

    /// <summary>An attribute tree: a leaf payload or children.</summary>
    internal sealed record Node(ushort Type, byte[]? Leaf, Node[]? Children);

    internal static readonly Gen<Node> Trees = Gen.Int.Select(seed => RandomTree(new Random(seed), 0));

    private static Node RandomTree(Random random, int depth)
    {
        var type = (ushort)random.Next(1, 0x3fff);
        if (depth < 3 && random.Next(3) == 0)
            return new Node(type, null, Enumerable.Range(0, random.Next(0, 5)).Select(_ => RandomTree(random, depth + 1)).ToArray());
        var leaf = new byte[random.Next(0, 3) == 0 ? random.Next(0, 40) : random.Next(0, 9)];
        random.NextBytes(leaf);
        return new Node(type, leaf, null);
    }

    private static void WriteTree(ref NetlinkWriter w, Node node)
    {
        if (node.Leaf is not null)
        {
            w.WriteBytes(node.Type, node.Leaf);
            return;
        }
        var mark = w.BeginNested(node.Type);
        foreach (var child in node.Children!) WriteTree(ref w, child);
        w.EndNested(mark);
    }

    internal static byte[] Message(Node[] nodes, ushort type = 0x20, byte command = 1)
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        var m = w.BeginMessage(type, NetlinkFlags.Multi, 1, 2);
        w.WriteGenericHeader(command, 1);
        foreach (var n in nodes) WriteTree(ref w, n);
        w.EndMessage(m);
        return buffer.WrittenSpan.ToArray();
    }

    private static List<Node> ReadTree(ReadOnlySpan<byte> attributes)
    {
        var nodes = new List<Node>();
        foreach (var a in new AttributeReader(attributes))
            nodes.Add(a.HasNestedFlag ? new Node(a.Type, null, [.. ReadTree(a.Payload)]) : new Node(a.Type, a.Payload.ToArray(), null));
        return nodes;
    }

    private static bool Same(Node a, Node b) =>
        a.Type == b.Type && (a.Leaf is not null
            ? b.Leaf is not null && a.Leaf.AsSpan().SequenceEqual(b.Leaf)
            : b.Children is not null && a.Children!.Length == b.Children.Length && a.Children.Zip(b.Children).All(p => Same(p.First, p.Second)));

    [Fact]
    public void RandomBytes_DecodeOrRaiseDecodeException() =>
        Gen.Byte.Array[0, 600].Sample(DecodesOrRaisesDecodeException, iter: 20_000);

    [Fact]
    public void RandomBytesBehindAPlausibleHeader_DecodeOrRaiseDecodeException() =>
        // A header whose length matches the datagram gets the reader into the attributes.
        Gen.Select(Gen.Byte.Array[0, 300], Gen.OneOfConst<ushort>(2, 3, 0x10, 0x20), Gen.UShort).Sample((body, type, flags) =>
        {
            var bytes = new Wire().Message(type, flags, 1, 2).Raw(body).End(message: true).ToArray();
            DecodesOrRaisesDecodeException(bytes);
        }, iter: 20_000);

    [Fact]
    public void WrittenTrees_ReadBackIdentical() =>
        Trees.Array[0, 6].Sample(nodes =>
        {
            var bytes = Message(nodes);
            var reader = new NetlinkMessageReader(bytes);
            Assert.True(reader.TryRead(out var m));
            var read = ReadTree(m.ReadGeneric().AttributeBytes);
            Assert.Equal(nodes.Length, read.Count);
            Assert.All(nodes.Zip(read), p => Assert.True(Same(p.First, p.Second)));
            Assert.False(reader.TryRead(out _));
        }, iter: 2_000);

    [Fact]
    public void EveryTruncation_OfAValidMessage_RaisesDecodeException() =>
        Trees.Array[1, 6].Sample(nodes =>
        {
            var bytes = Message(nodes);
            for (var cut = 1; cut < bytes.Length; cut++)
                Assert.Throws<NetlinkDecodeException>(() => ReadEverything(bytes.AsSpan(0, cut)));
        }, iter: 300);

    [Fact]
    public void OversizedLengths_RaiseDecodeException() =>
        // Any length field (nlmsg_len or an nla_len) raised past the end of the data is caught before use.
        Gen.Select(Trees.Array[1, 6], Gen.Int[0, 1000], Gen.Int[1, 70_000]).Sample((nodes, pick, excess) =>
        {
            var bytes = Message(nodes);
            var lengthOffsets = AttributeLengthOffsets(bytes.AsSpan(20), 20).Prepend(0).ToArray();
            var at = lengthOffsets[pick % lengthOffsets.Length];
            var remaining = bytes.Length - at;
            if (at == 0) BitConverter.GetBytes((uint)(bytes.Length + excess)).CopyTo(bytes, 0);
            else BitConverter.GetBytes((ushort)Math.Min(remaining + excess, ushort.MaxValue)).CopyTo(bytes, at);
            Assert.Throws<NetlinkDecodeException>(() =>
            {
                var reader = new NetlinkMessageReader(bytes);
                while (reader.TryRead(out var m)) ReadTree(m.ReadGeneric().AttributeBytes);
            });
        }, iter: 5_000);

    [Fact]
    public void RandomMutations_OfValidMessages_DecodeOrRaiseDecodeException() =>
        Gen.Select(Trees.Array[1, 6], Gen.Int.Array[1, 8], Gen.Byte.Array[1, 8]).Sample((nodes, positions, values) =>
        {
            var bytes = Message(nodes);
            for (var i = 0; i < positions.Length; i++)
                bytes[(int)((uint)positions[i] % (uint)bytes.Length)] = values[i % values.Length];
            DecodesOrRaisesDecodeException(bytes);
        }, iter: 20_000);

    /// <summary>Offsets (in the message) of every nla_len, nested ones included.</summary>
    private static List<int> AttributeLengthOffsets(ReadOnlySpan<byte> attributes, int baseOffset)
    {
        var result = new List<int>();
        var at = 0;
        while (at + 4 <= attributes.Length)
        {
            var length = BitConverter.ToUInt16(attributes[at..]);
            var type = BitConverter.ToUInt16(attributes[(at + 2)..]);
            result.Add(baseOffset + at);
            if ((type & 0x8000) != 0) result.AddRange(AttributeLengthOffsets(attributes.Slice(at + 4, length - 4), baseOffset + at + 4));
            at += Netlink.Align(length);
        }
        return result;
    }
}
