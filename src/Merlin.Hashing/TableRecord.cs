using System.Buffers.Binary;

namespace Merlin.Hashing;

/// <summary>
/// A slot's owner before the change that moved it: <paramref name="Server"/> indexes the current table's
/// <see cref="MinimalDisruptionTable.Servers"/> (a previous owner that left the table is forgotten: nothing
/// could hand a packet to it), <paramref name="Since"/> is when the slot moved (Unix seconds).
/// </summary>
public readonly record struct PreviousOwner(int Slot, int Server, long Since);

/// <summary>
/// What the API stores for an md-table service: the current <see cref="MinimalDisruptionTable"/> and, for each
/// slot whose owner changed within the window, the owner before — what a real server needs for second chance
/// (a packet that reaches a server with no connection for it is handed to the slot's previous owner).
/// <para>
/// Which previous owners are kept: a slot that changes owner records the owner it had (replacing an older
/// record: only the last previous owner is known); a record is dropped when the slot returns to that owner,
/// when that owner leaves the table, or when the window has passed since the move — except while that owner
/// is still in the table with weight 0 (draining), so a drain's moved connections have their second chance
/// until the drained server is removed, however long the drain. Records are pruned only when the API writes
/// the service (a record past its window costs a hand-off of a packet nobody has, never a wrong delivery).
/// </para>
/// <para>
/// Encoding version 2 (<see cref="TableEncoding"/>): "MDT" 0x02, the table as in version 1 (M, servers, packed
/// owners), then varint T and T strictly ascending Unix-second stamps (the first as is, then differences), then
/// varint K and K records in ascending slot order (varint slot − previous slot − 1, the first as its slot;
/// varint server index; varint stamp index), then FNV-1a 64 of everything before. At 1,000 servers and
/// M = 131,071 every slot holding a record costs at most ~5 bytes a slot: under 0.9 MB with the table.
/// </para>
/// </summary>
public sealed class TableRecord
{
    public const byte Version = 2;

    private readonly PreviousOwner[] _previous;
    private int[]? _bySlot;

    internal TableRecord(MinimalDisruptionTable current, PreviousOwner[] previous)
    {
        Current = current;
        _previous = previous;
    }

    /// <summary>The table the load balancers program.</summary>
    public MinimalDisruptionTable Current { get; }

    /// <summary>The slots with a previous owner, in slot order; never the slot's current owner.</summary>
    public IReadOnlyList<PreviousOwner> Previous => _previous;

    /// <summary>The id of the server that owned <paramref name="slot"/> before it moved within the window, or null.</summary>
    public string? PreviousId(int slot)
    {
        var index = BySlot()[slot];
        return index < 0 ? null : Current.Servers[_previous[index].Server].Id;
    }

    private int[] BySlot()
    {
        if (_bySlot is { } known) return known;
        var bySlot = new int[Current.Size];
        bySlot.AsSpan().Fill(-1);
        for (int i = 0; i < _previous.Length; i++) bySlot[_previous[i].Slot] = i;
        return _bySlot = bySlot;
    }

    /// <summary>The distinct times the recorded slots moved, ascending: the encoding's stamp list, and the ranks Next frees by.</summary>
    private long[] Stamps() => _previous.Select(p => p.Since).Distinct().Order().ToArray();

    /// <summary>A table with no previous owners (a fresh table, or a version 1 encoding).</summary>
    public static TableRecord Of(MinimalDisruptionTable table) => new(table, []);

    /// <summary>
    /// The record that follows <paramref name="before"/> (null: none) for <paramref name="servers"/>: the next
    /// table (<see cref="MinimalDisruptionTable.Next(MinimalDisruptionTable?, IReadOnlyList{ValueTuple{string, uint}}, int?)"/>)
    /// and the previous owners as of <paramref name="now"/>, keeping each for <paramref name="window"/> (see the class).
    /// When M grows, each new slot takes the records of the old slot that covers the same hashes, as the table does.
    /// </summary>
    public static TableRecord Next(TableRecord? before, IReadOnlyList<(string Id, uint Weight)> servers, DateTimeOffset now, TimeSpan window, int? size = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(window, TimeSpan.Zero);
        long stamp = now.ToUnixTimeSeconds(), windowSeconds = (long)Math.Ceiling(window.TotalSeconds);
        // Slots whose previous owner is still kept: moving them again strands that owner's connections from before
        // the move. So they move only when a server cannot free enough others, the oldest moves first (their
        // connections had the longest to end), and last those whose previous owner drains: it surely still has some.
        int[]? keep = null;
        if (before is not null && before._previous.Length > 0)
        {
            keep = new int[before.Current.Size];
            var stamps = before.Stamps();
            foreach (var p in before._previous)
            {
                if (before.Current.Servers[p.Server].Weight == 0) keep[p.Slot] = int.MaxValue;
                else if (p.Since >= stamp - windowSeconds) keep[p.Slot] = 1 + Array.BinarySearch(stamps, p.Since);
            }
        }
        var current = MinimalDisruptionTable.Next(before?.Current, servers, size, keep);
        if (before is null) return Of(current);

        var index = new Dictionary<string, int>(current.Servers.Count, StringComparer.Ordinal);
        for (int i = 0; i < current.Servers.Count; i++) index[current.Servers[i].Id] = i;
        var old = before.Current;
        var oldBySlot = before.BySlot();
        int m = current.Size;
        var previous = new List<PreviousOwner>();
        for (int s = 0; s < m; s++)
        {
            int from = old.Size == m ? s : (int)(((2L * s + 1) * old.Size) / (2L * m));
            string? owner = current.OwnerId(s), was = old.OwnerId(from);
            (string Id, long Since)? record = null;
            if (was is not null && was != owner) record = (was, stamp);
            else if (oldBySlot[from] is >= 0 and var i) record = (old.Servers[before._previous[i].Server].Id, before._previous[i].Since);
            if (record is not { } r || r.Id == owner || !index.TryGetValue(r.Id, out var server)) continue;
            bool draining = current.Servers[server].Weight == 0;
            if (r.Since < stamp - windowSeconds && !draining) continue;
            previous.Add(new PreviousOwner(s, server, r.Since));
        }
        return new TableRecord(current, [.. previous]);
    }

    /// <summary>The version 2 encoding (version 2 even with no previous owners, so that what the API stores has one form).</summary>
    public byte[] Encode()
    {
        var buffer = TableEncoding.Header(Version);
        TableEncoding.WriteTable(buffer, Current);
        var stamps = Stamps();
        TableEncoding.WriteVarint(buffer, (ulong)stamps.Length);
        long last = 0;
        foreach (var t in stamps)
        {
            if (t < 0) throw new ArgumentException($"stamp {t} is before 1970");
            TableEncoding.WriteVarint(buffer, (ulong)(t - last));
            last = t;
        }
        TableEncoding.WriteVarint(buffer, (ulong)_previous.Length);
        int slot = -1;
        foreach (var p in _previous)
        {
            TableEncoding.WriteVarint(buffer, (ulong)(p.Slot - slot - 1));
            TableEncoding.WriteVarint(buffer, (ulong)p.Server);
            TableEncoding.WriteVarint(buffer, (ulong)Array.BinarySearch(stamps, p.Since));
            slot = p.Slot;
        }
        return TableEncoding.Sealed(buffer);
    }

    /// <summary>FNV-1a 64 of the encoding: equal hashes, equal records (what an agent and the API compare).</summary>
    public ulong Hash => BinaryPrimitives.ReadUInt64LittleEndian(Encode().AsSpan()[^8..]);

    public string HashText => TableEncoding.FormatHash(Hash);

    /// <summary>Reads a stored record of either version, checking everything; <see cref="TableFormatException"/> says what is wrong.</summary>
    public static TableRecord Decode(ReadOnlySpan<byte> bytes) => TableEncoding.DecodeRecord(bytes);

    internal static PreviousOwner[] ReadPrevious(ReadOnlySpan<byte> body, ref int at, MinimalDisruptionTable table)
    {
        ulong count = TableEncoding.ReadVarint(body, ref at, "stamp count");
        if (count > (ulong)table.Size) throw new TableFormatException($"{count} stamps for a table of {table.Size} slots");
        var stamps = new long[count];
        long last = 0;
        for (int i = 0; i < stamps.Length; i++)
        {
            ulong delta = TableEncoding.ReadVarint(body, ref at, "stamp");
            if ((i > 0 && delta == 0) || delta > long.MaxValue / 2 || last > long.MaxValue / 2) throw new TableFormatException($"stamp {i}: not after the one before");
            stamps[i] = last += (long)delta;
        }
        ulong records = TableEncoding.ReadVarint(body, ref at, "previous-owner count");
        if (records > (ulong)table.Size) throw new TableFormatException($"{records} previous owners for a table of {table.Size} slots");
        var previous = new PreviousOwner[records];
        long slot = -1;
        for (int i = 0; i < previous.Length; i++)
        {
            slot += (long)Math.Min(TableEncoding.ReadVarint(body, ref at, "slot"), (ulong)table.Size) + 1;
            if (slot >= table.Size) throw new TableFormatException($"previous owner {i}: slot {slot} is outside the table ({table.Size} slots)");
            ulong server = TableEncoding.ReadVarint(body, ref at, "server index");
            if (server >= (ulong)table.Servers.Count) throw new TableFormatException($"slot {slot}: previous owner index {server} is out of range (there are {table.Servers.Count})");
            if ((int)server == table.Owners[(int)slot]) throw new TableFormatException($"slot {slot}: its previous owner {table.Servers[(int)server].Id} is its current owner");
            ulong stamp = TableEncoding.ReadVarint(body, ref at, "stamp index");
            if (stamp >= count) throw new TableFormatException($"slot {slot}: stamp index {stamp} is out of range (there are {count})");
            previous[i] = new PreviousOwner((int)slot, (int)server, stamps[stamp]);
        }
        return previous;
    }
}
