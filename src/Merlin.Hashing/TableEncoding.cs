using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace Merlin.Hashing;

/// <summary>A stored table that cannot be used, and why (damaged, wrong size, wrong hash).</summary>
public sealed class TableFormatException(string message) : Exception(message);

/// <summary>
/// The stored form of a <see cref="MinimalDisruptionTable"/>, version 1 — canonical, so equal tables
/// are equal bytes and the hash can stand for the table:
/// <code>
/// "MDT" 0x01                         magic and version
/// varint M                           slots
/// varint N                           servers, then N × (varint length, UTF-8 id, varint weight), ids in ordinal order
/// M × b bits, least significant first the owner's index (N = no owner), b = bit length of N (at least 1), zero-padded to a byte
/// 8 bytes little-endian              FNV-1a 64 of everything before
/// </code>
/// Varints are unsigned LEB128. 1,000 servers and M = 131,071 take 10 bits a slot: about 180 KB, well under
/// etcd's 1.5 MiB request limit.
/// </summary>
public static class TableEncoding
{
    public const byte Version = 1;
    private static ReadOnlySpan<byte> Magic => "MDT"u8;
    private const ulong FnvOffset = 14695981039346656037UL, FnvPrime = 1099511628211UL;

    /// <summary>The largest id a table holds, in UTF-8 bytes (an endpoint is far shorter).</summary>
    public const int MaxIdBytes = 255;

    public static string FormatHash(ulong hash) => hash.ToString("x16", CultureInfo.InvariantCulture);

    public static byte[] Encode(MinimalDisruptionTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        var buffer = Header(Version);
        WriteTable(buffer, table);
        return Sealed(buffer);
    }

    /// <summary>"MDT" and a version byte, the start of every encoding.</summary>
    internal static List<byte> Header(byte version)
    {
        var buffer = new List<byte>(Magic.Length + 16);
        buffer.AddRange(Magic);
        buffer.Add(version);
        return buffer;
    }

    /// <summary>The buffer with its FNV-1a 64 appended: the finished encoding.</summary>
    internal static byte[] Sealed(List<byte> buffer)
    {
        var bytes = new byte[buffer.Count + 8];
        buffer.CopyTo(bytes);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(buffer.Count), Fnv1a(bytes.AsSpan(0, buffer.Count)));
        return bytes;
    }

    /// <summary>M, the servers and the packed owners: the table part that versions 1 and 2 share.</summary>
    internal static void WriteTable(List<byte> buffer, MinimalDisruptionTable table)
    {
        WriteVarint(buffer, (ulong)table.Size);
        WriteVarint(buffer, (ulong)table.Servers.Count);
        foreach (var s in table.Servers)
        {
            var id = Encoding.UTF8.GetBytes(s.Id);
            if (id.Length > MaxIdBytes) throw new ArgumentException($"server id \"{s.Id}\" is longer than {MaxIdBytes} bytes");
            WriteVarint(buffer, (ulong)id.Length);
            buffer.AddRange(id);
            WriteVarint(buffer, s.Weight);
        }
        int n = table.Servers.Count;
        int width = Width(n);
        var packed = new byte[PackedLength(table.Size, width)];
        ulong acc = 0;
        int bits = 0, at = 0;
        foreach (var o in table.Owners)
        {
            acc |= (ulong)(o < 0 ? n : o) << bits;
            bits += width;
            while (bits >= 8) { packed[at++] = (byte)acc; acc >>= 8; bits -= 8; }
        }
        if (bits > 0) packed[at++] = (byte)acc;
        buffer.AddRange(packed);
    }

    /// <summary>The table's hash without keeping its encoding (a version 1 encoding's, whatever record holds the table).</summary>
    internal static ulong HashOf(MinimalDisruptionTable table)
    {
        var bytes = Encode(table);
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(bytes.Length - 8));
    }

    /// <summary>The hash an encoding carries (its last 8 bytes), unchecked; null if it is too short to carry one.</summary>
    public static ulong? StoredHash(ReadOnlySpan<byte> bytes) =>
        bytes.Length < Magic.Length + 1 + 8 ? null : BinaryPrimitives.ReadUInt64LittleEndian(bytes[^8..]);

    /// <summary>The current table of an encoding of either version (a version 2 record's previous owners are not read).</summary>
    public static MinimalDisruptionTable Decode(ReadOnlySpan<byte> bytes) => DecodeRecord(bytes).Current;

    /// <summary>
    /// A stored record of either version: version 1 is a table alone (no previous owners), version 2 a table and
    /// its previous owners (<see cref="TableRecord"/>). Everything is checked; <see cref="TableFormatException"/> says what is wrong.
    /// </summary>
    public static TableRecord DecodeRecord(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < Magic.Length + 1 + 8 || !bytes[..Magic.Length].SequenceEqual(Magic))
            throw new TableFormatException("not a minimal-disruption table (no \"MDT\" header)");
        byte version = bytes[Magic.Length];
        if (version is not (Version or TableRecord.Version))
            throw new TableFormatException($"table format version {version} is not {Version} or {TableRecord.Version}");
        var body = bytes[..^8];
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(bytes[^8..]), computed = Fnv1a(body);
        if (stored != computed)
            throw new TableFormatException($"hash mismatch: the table says {FormatHash(stored)}, its content hashes to {FormatHash(computed)} (damaged)");

        int at = Magic.Length + 1;
        var table = ReadTable(body, ref at);
        var previous = version == TableRecord.Version ? TableRecord.ReadPrevious(body, ref at, table) : [];
        if (at != body.Length) throw new TableFormatException($"{body.Length - at} bytes follow the table's end");
        return new TableRecord(table, previous);
    }

    private static MinimalDisruptionTable ReadTable(ReadOnlySpan<byte> body, ref int at)
    {
        ulong m = ReadVarint(body, ref at, "size");
        if (m > MaglevTable.MaxSize) throw new TableFormatException($"size {m} is larger than {MaglevTable.MaxSize}");
        ulong count = ReadVarint(body, ref at, "server count");
        if (count > m) throw new TableFormatException($"{count} servers do not fit a table of {m} slots");
        int size = (int)m, n = (int)count;
        if (MinimalDisruptionTable.ValidateSize(size, n) is { } sizeError) throw new TableFormatException(sizeError);

        var servers = new TableServer[n];
        for (int i = 0; i < n; i++)
        {
            ulong length = ReadVarint(body, ref at, "id length");
            if (length == 0 || length > MaxIdBytes || (ulong)(body.Length - at) < length)
                throw new TableFormatException($"server {i}: id length {length} is out of range");
            string id;
            try { id = new UTF8Encoding(false, true).GetString(body.Slice(at, (int)length)); }
            catch (DecoderFallbackException) { throw new TableFormatException($"server {i}: id is not UTF-8"); }
            at += (int)length;
            ulong weight = ReadVarint(body, ref at, "weight");
            if (weight > uint.MaxValue) throw new TableFormatException($"server {id}: weight {weight} is out of range");
            if (i > 0 && string.CompareOrdinal(servers[i - 1].Id, id) >= 0)
                throw new TableFormatException($"server {id}: ids are not in order or appear twice");
            servers[i] = new TableServer(id, (uint)weight);
        }

        int width = Width(n);
        if (body.Length - at < PackedLength(size, width))
            throw new TableFormatException($"{body.Length - at} bytes of slots, {PackedLength(size, width)} expected for {size} slots of {width} bits");
        var owners = new int[size];
        ulong acc = 0;
        int bits = 0;
        ulong mask = (1UL << width) - 1;
        bool anyWeight = servers.Any(s => s.Weight > 0);
        for (int s = 0; s < size; s++)
        {
            while (bits < width) { acc |= (ulong)body[at++] << bits; bits += 8; }
            int v = (int)(acc & mask);
            acc >>= width;
            bits -= width;
            if (v > n) throw new TableFormatException($"slot {s}: server index {v} is out of range (there are {n})");
            if (v < n && servers[v].Weight == 0) throw new TableFormatException($"slot {s}: owned by {servers[v].Id}, which has weight 0");
            if (v == n && anyWeight) throw new TableFormatException($"slot {s} has no owner although servers have weight");
            owners[s] = v == n ? -1 : v;
        }
        if (acc != 0) throw new TableFormatException("padding bits are not zero");
        return MinimalDisruptionTable.FromParts(servers, owners);
    }

    /// <summary>Bits per slot: enough for indices 0…N (N meaning no owner).</summary>
    private static int Width(int n) => Math.Max(1, 32 - int.LeadingZeroCount(n));

    private static int PackedLength(int size, int width) => (int)(((long)size * width + 7) / 8);

    private static ulong Fnv1a(ReadOnlySpan<byte> data)
    {
        ulong h = FnvOffset;
        foreach (var b in data) h = (h ^ b) * FnvPrime;
        return h;
    }

    internal static void WriteVarint(List<byte> buffer, ulong value)
    {
        while (value >= 0x80) { buffer.Add((byte)(value | 0x80)); value >>= 7; }
        buffer.Add((byte)value);
    }

    internal static ulong ReadVarint(ReadOnlySpan<byte> data, ref int at, string what)
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (at >= data.Length) throw new TableFormatException($"{what}: the table ends early");
            byte b = data[at++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80) return value;
        }
        throw new TableFormatException($"{what}: varint is too long");
    }
}
