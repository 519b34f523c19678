using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;
using Merlin.Dataplane.Nftables.Layout;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// A set written through our own netlink codec ahead of the nft transaction that uses it: created
/// and filled under its own name while no rule names it, so the packet path cannot see it until that
/// transaction (which adds the rules) commits.
/// </summary>
internal sealed record StagedSet(string Family, string Table, NftSet Set)
{
    /// <summary>
    /// Whether <paramref name="set"/> is a set this codec writes: a DSR Maglev map (<c>typeof numgen
    /// inc mod M : ether daddr</c>, slot → real server MAC), which is where a first pass of distinct
    /// server sets has nearly all of its elements (1,000 maps × 1,021 slots). Other sets stay in the
    /// nft script; a NAT map could not be staged anyway, since nft 1.0.6 refuses a new rule that
    /// names an existing <c>… th dport</c> NAT map (see <see cref="ScriptRenderer.Redeclared"/>).
    /// </summary>
    public static bool Stageable(NftSet set) =>
        set is { Kind: "map", Dynamic: false, Content: SlotContent slots } && set.Declaration == LayoutBuilder.DsrDeclaration(slots.Length);
}

/// <summary>What staging did: transactions committed, and the tables it had to make (deleted whole if the sets are unstaged).</summary>
internal sealed record StageResult(int Commits, IReadOnlyList<(string Family, string Table)> TablesMade)
{
    public static readonly StageResult None = new(0, []);
}

/// <summary>
/// Writes <see cref="StagedSet"/>s over NETLINK_NETFILTER: NFT_MSG_NEWTABLE (if missing),
/// NFT_MSG_NEWSET with the very attributes nft 1.0.6 sends for the map's declaration (its user data
/// included, so nft lists and edits the map as if it had made it), and NFT_MSG_NEWSETELEM messages of
/// up to <see cref="ElementsPerMessage"/> elements, in batches of at most <see cref="MaxBatchBytes"/>.
/// Each batch is one transaction; a set may span two, which is harmless while no rule names it.
/// <para>
/// Why: nft's parser and evaluation are most of what <c>nft -f</c> spends on a million map elements
/// (perf: 45 % libnftables, 16 % glibc, 35 % kernel). Encoded here, the same elements cost the
/// kernel's share and a few tens of milliseconds of ours.
/// </para>
/// </summary>
internal static class SetStaging
{
    private const byte NFT_MSG_NEWTABLE = 0, NFT_MSG_DELTABLE = 2, NFT_MSG_NEWSET = 9, NFT_MSG_DELSET = 11, NFT_MSG_NEWSETELEM = 12;
    private const ushort NLM_F_EXCL = 0x200, NLM_F_CREATE = 0x400;
    private const uint NFT_SET_MAP = 0x8;
    private const uint TYPE_INTEGER = 4, TYPE_ETHERADDR = 9;

    /// <summary>Elements per NEWSETELEM message: the element list is one attribute, whose length is 16 bits (32 bytes an element).</summary>
    internal const int ElementsPerMessage = 1024;

    /// <summary>The largest batch (one transaction, one send): bounds our buffer and the kernel's copy of it.</summary>
    internal const int MaxBatchBytes = 8 << 20;

    /// <summary>
    /// Creates and fills <paramref name="sets"/> (and their tables, if missing); returns the number of
    /// transactions committed and the tables it made. On failure, what was committed is deleted again.
    /// </summary>
    public static StageResult Stage(NetfilterSocket socket, IReadOnlyList<StagedSet> sets, int maxBatchBytes = MaxBatchBytes)
    {
        int limit = Math.Min(maxBatchBytes, socket.ReserveSendBuffer(maxBatchBytes));
        var writer = new BatchWriter(socket.NextSequence, limit);
        int committed = 0;
        var pending = new List<StagedSet>();                        // declared in the batch being written
        var created = new List<StagedSet>();                        // declared in a committed batch
        var pendingTables = new List<(string, string)>();
        var madeTables = new List<(string Family, string Table)>();
        try
        {
            foreach (var group in sets.GroupBy(s => (s.Family, s.Table)))
            {
                byte family = NfTablesReader.FamilyNumber(group.Key.Family);
                bool first = true;
                foreach (var staged in group)
                {
                    var slots = (SlotContent)staged.Set.Content;
                    uint id = (uint)(created.Count + pending.Count + 1);
                    if (first)
                    {
                        // The table and its first set in one batch: a batch holding only the NEWTABLE
                        // of a table that exists would commit nothing, and not move the generation.
                        writer.MakeRoom(2, Send);
                        if (!NfTablesReader.TableExists(socket, group.Key.Family, group.Key.Table))
                        {
                            writer.Message(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, family, w => w.String(1, group.Key.Table), Send);   // NFTA_TABLE_NAME
                            pendingTables.Add(group.Key);
                        }
                        first = false;
                    }
                    writer.Message(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, family, w => WriteMapDeclaration(w, staged.Table, staged.Set.Name, slots.Length, id), Send);
                    pending.Add(staged);
                    WriteSlots(writer, family, staged.Table, staged.Set.Name, slots, Send);
                }
            }
            Send(writer);
            return new StageResult(committed, madeTables);
        }
        catch
        {
            if (created.Count > 0 || madeTables.Count > 0)
            {
                try { Unstage(socket, new StageResult(committed, madeTables), created); }
                catch (IOException) { }   // the next resync finds and removes them (sets no layout names)
            }
            throw;
        }

        void Send(BatchWriter full)
        {
            if (full.Finish() is not { } batch) return;
            socket.SendBatch(batch.Bytes.Span, batch.FirstSequence, batch.AckSequence);
            committed++;
            created.AddRange(pending);
            pending.Clear();
            madeTables.AddRange(pendingTables);
            pendingTables.Clear();
        }
    }

    /// <summary>
    /// Deletes staged sets again (after the transaction that was to use them failed), in one
    /// transaction: the tables staging made go whole, the other sets one by one.
    /// </summary>
    public static void Unstage(NetfilterSocket socket, StageResult staging, IReadOnlyList<StagedSet> sets)
    {
        var writer = new BatchWriter(socket.NextSequence, int.MaxValue);
        foreach (var (family, table) in staging.TablesMade)
            writer.Message(NFT_MSG_DELTABLE, 0, NfTablesReader.FamilyNumber(family), w => w.String(1, table), _ => { });
        foreach (var staged in sets)
        {
            if (staging.TablesMade.Contains((staged.Family, staged.Table))) continue;
            writer.Message(NFT_MSG_DELSET, 0, NfTablesReader.FamilyNumber(staged.Family), w => w.String(1, staged.Table).String(2, staged.Set.Name), _ => { });
        }
        if (writer.Finish() is not { } batch) return;
        socket.ReserveSendBuffer(batch.Bytes.Length);
        socket.SendBatch(batch.Bytes.Span, batch.FirstSequence, batch.AckSequence);
    }

    /// <summary>
    /// NFT_MSG_NEWSET's attributes for <c>typeof numgen inc mod M : ether daddr; size M;</c>, in the
    /// order nft sends them: table, name, flags (map), key type and length (integer, 4 bytes), data
    /// type and length (ether_addr, 6 bytes), the set's id within the transaction (which the kernel
    /// requires, unique in the batch), description (size M), user data.
    /// </summary>
    internal static void WriteMapDeclaration(BatchWriter w, string table, string name, int slots, uint id)
    {
        w.String(1, table)                       // NFTA_SET_TABLE
            .String(2, name)                     // NFTA_SET_NAME
            .U32BigEndian(3, NFT_SET_MAP)        // NFTA_SET_FLAGS
            .U32BigEndian(4, TYPE_INTEGER)       // NFTA_SET_KEY_TYPE
            .U32BigEndian(5, 4)                  // NFTA_SET_KEY_LEN
            .U32BigEndian(6, TYPE_ETHERADDR)     // NFTA_SET_DATA_TYPE
            .U32BigEndian(7, 6)                  // NFTA_SET_DATA_LEN
            .U32BigEndian(10, id);               // NFTA_SET_ID
        int desc = w.BeginNest(9);               // NFTA_SET_DESC
        w.U32BigEndian(1, (uint)slots);          // NFTA_SET_DESC_SIZE
        w.EndNest(desc);
        w.Bytes(13, MapUserData(slots));         // NFTA_SET_USERDATA
    }

    /// <summary>
    /// The user data nft 1.0.6 stores with <c>typeof numgen inc mod M : ether daddr</c>: TLVs of u8 type,
    /// u8 length, value (numbers in host order). nft reads the declaration back from it; without it
    /// the map would list as <c>type integer : ether_addr</c>.
    /// </summary>
    internal static byte[] MapUserData(int slots)
    {
        var u = new UserDataWriter();
        u.U32(0, 1);                    // NFTNL_UDATA_SET_KEYBYTEORDER: host
        u.U32(1, 2);                    // NFTNL_UDATA_SET_DATABYTEORDER: big endian
        int key = u.Begin(3);           // NFTNL_UDATA_SET_KEY_TYPEOF
        u.U32(0, 23);                   //   NFTNL_UDATA_SET_TYPEOF_EXPR: numgen
        int numgen = u.Begin(1);        //   NFTNL_UDATA_SET_TYPEOF_DATA
        u.U32(0, 0);                    //     NFTNL_UDATA_NUMGEN_TYPE: inc
        u.U32(1, (uint)slots);          //     NFTNL_UDATA_NUMGEN_MOD
        u.U32(2, 0);                    //     NFTNL_UDATA_NUMGEN_OFFSET
        u.End(numgen);
        u.End(key);
        int data = u.Begin(4);          // NFTNL_UDATA_SET_DATA_TYPEOF
        u.U32(0, 7);                    //   NFTNL_UDATA_SET_TYPEOF_EXPR: payload
        int payload = u.Begin(1);       //   NFTNL_UDATA_SET_TYPEOF_DATA
        u.U32(0, 17);                   //     NFTNL_UDATA_SET_PAYLOAD_DESC: ether
        u.U32(1, 1);                    //     NFTNL_UDATA_SET_PAYLOAD_TYPE: daddr
        u.End(payload);
        u.End(data);
        u.U32(6, 0);                    // NFTNL_UDATA_SET_DATA_INTERVAL: no
        return u.ToArray();
    }

    /// <summary>NEWSETELEM messages for every slot that holds a server: key = the slot (u32, host order), data = the MAC.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void WriteSlots(BatchWriter writer, byte family, string table, string set, SlotContent slots, Action<BatchWriter> full)
    {
        Span<byte> mac = stackalloc byte[6];
        string? last = null;
        int slot = 0;
        while (true)
        {
            while (slot < slots.Length && slots.ValueAt(slot) is null) slot++;
            if (slot == slots.Length) return;
            int start = writer.BeginMessage(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, family, full);
            writer.String(1, table).String(2, set);   // NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET
            int list = writer.BeginNest(3);           // NFTA_SET_ELEM_LIST_ELEMENTS
            for (int n = 0; n < ElementsPerMessage && slot < slots.Length; slot++)
            {
                var value = slots.ValueAt(slot);
                if (value is null) continue;
                if (!ReferenceEquals(value, last)) { ParseMac(value, mac); last = value; }
                writer.SlotElement((uint)slot, mac);
                n++;
            }
            writer.EndNest(list);
            writer.EndMessage(start);
        }
    }

    /// <summary>"02:00:5e:10:00:01" → six bytes.</summary>
    internal static void ParseMac(string text, Span<byte> into)
    {
        if (text.Length != 17) throw new FormatException($"not a MAC address: {text}");
        for (int i = 0; i < 6; i++)
        {
            if (i > 0 && text[i * 3 - 1] != ':') throw new FormatException($"not a MAC address: {text}");
            into[i] = (byte)(Hex(text[i * 3]) << 4 | Hex(text[i * 3 + 1]));
        }

        int Hex(char c) => c switch
        {
            >= '0' and <= '9' => c - '0',
            >= 'a' and <= 'f' => c - 'a' + 10,
            >= 'A' and <= 'F' => c - 'A' + 10,
            _ => throw new FormatException($"not a MAC address: {text}"),
        };
    }

    /// <summary>nftables' user data: TLVs of u8 type, u8 length, value; nests are TLVs of TLVs.</summary>
    private sealed class UserDataWriter
    {
        private readonly List<byte> _bytes = [];

        public void U32(byte type, uint value)
        {
            _bytes.Add(type);
            _bytes.Add(4);
            Span<byte> v = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(v, value);   // host order (this codec runs on little-endian Linux)
            _bytes.AddRange(v);
        }

        public int Begin(byte type)
        {
            _bytes.Add(type);
            _bytes.Add(0);
            return _bytes.Count;
        }

        public void End(int start) => _bytes[start - 1] = checked((byte)(_bytes.Count - start));

        public byte[] ToArray() => [.. _bytes];
    }
}

/// <summary>
/// Encodes nfnetlink batches: BATCH_BEGIN, messages, BATCH_END, into one buffer. When the next
/// message would make the batch longer than its limit, the batch so far is handed to the caller's
/// send first. The last message of a batch asks for an acknowledgement (NLM_F_ACK).
/// </summary>
internal sealed class BatchWriter(Func<uint> nextSequence, int limit)
{
    private const int HeaderLength = 16;
    private const ushort NLM_F_REQUEST = 0x1, NLM_F_ACK = 0x4;
    private byte[] _buffer = new byte[Math.Min(limit, 256 << 10)];
    private int _length;
    private int _lastMessage = -1;
    private uint _lastSequence;
    private uint _firstSequence;

    /// <summary>A message of no more than 64 KiB: the buffer is sent first if it would not fit.</summary>
    public void Message(byte type, ushort flags, byte family, Action<BatchWriter> attributes, Action<BatchWriter> full)
    {
        int start = BeginMessage(type, flags, family, full);
        attributes(this);
        EndMessage(start);
    }

    /// <summary>Hands the batch so far to <paramref name="full"/> unless <paramref name="messages"/> more messages of up to 64 KiB each fit after it.</summary>
    public void MakeRoom(int messages, Action<BatchWriter> full)
    {
        if (_length > 0 && _length + messages * (64 << 10) + 2 * 20 > limit) full(this);
    }

    /// <summary>Starts a message; <paramref name="full"/> gets the batch so far when this one might not fit (a message is at most 64 KiB).</summary>
    public int BeginMessage(byte type, ushort flags, byte family, Action<BatchWriter> full)
    {
        MakeRoom(1, full);
        if (_length == 0)
        {
            Begin(0x10);   // NFNL_MSG_BATCH_BEGIN
            _firstSequence = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(8));
        }
        return Header((ushort)((10 << 8) | type), (ushort)(NLM_F_REQUEST | flags), family, 0);
    }

    public void EndMessage(int start)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer.AsSpan(start), (uint)(_length - start));
        _lastMessage = start;
        _lastSequence = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(start + 8));
    }

    /// <summary>Closes the batch (its last message asks for an acknowledgement) and returns it; null if it holds no message. The writer starts a new batch after this.</summary>
    public Batch? Finish()
    {
        if (_lastMessage < 0) { _length = 0; return null; }
        var flags = BinaryPrimitives.ReadUInt16LittleEndian(_buffer.AsSpan(_lastMessage + 6));
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(_lastMessage + 6), (ushort)(flags | NLM_F_ACK));
        Begin(0x11);   // NFNL_MSG_BATCH_END
        var result = new Batch(new ReadOnlyMemory<byte>(_buffer, 0, _length), _firstSequence, _lastSequence);
        _length = 0;
        _lastMessage = -1;
        // The bytes stay valid until the next message is written: the caller sends them first.
        return result;
    }

    /// <summary>A finished batch: its bytes, the sequence numbers it spans, the one whose acknowledgement ends it.</summary>
    public readonly record struct Batch(ReadOnlyMemory<byte> Bytes, uint FirstSequence, uint AckSequence);

    private void Begin(ushort type)
    {
        int start = Header(type, NLM_F_REQUEST, 0, 10);   // AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer.AsSpan(start), HeaderLength + 4);
    }

    private int Header(ushort type, ushort flags, byte family, ushort resId)
    {
        var s = Reserve(HeaderLength + 4);
        int start = _length - HeaderLength - 4;
        BinaryPrimitives.WriteUInt16LittleEndian(s[4..], type);
        BinaryPrimitives.WriteUInt16LittleEndian(s[6..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], nextSequence());
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], 0);
        s[16] = family;
        s[17] = 0;   // NFNETLINK_V0
        BinaryPrimitives.WriteUInt16BigEndian(s[18..], resId);
        return start;
    }

    public BatchWriter String(ushort type, string value)
    {
        int length = Encoding.UTF8.GetByteCount(value) + 1;
        var s = Attribute(type, length);
        Encoding.UTF8.GetBytes(value, s);
        s[length - 1] = 0;
        return this;
    }

    public BatchWriter U32BigEndian(ushort type, uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(Attribute(type, 4), value);
        return this;
    }

    public BatchWriter Bytes(ushort type, ReadOnlySpan<byte> value)
    {
        value.CopyTo(Attribute(type, value.Length));
        return this;
    }

    public int BeginNest(ushort type)
    {
        Attribute((ushort)(type | 0x8000), 0);   // NLA_F_NESTED
        return _length - 4;
    }

    public void EndNest(int start)
    {
        int length = _length - start;
        if (length > ushort.MaxValue) throw new InvalidOperationException($"a nested netlink attribute of {length} bytes (at most 65,535)");
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(start), (ushort)length);
    }

    /// <summary>
    /// One element of a slot → MAC map, 32 bytes: NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE
    /// u32 (host order) }, NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE 6 bytes } }. Written in one go: a
    /// first pass writes a million of them.
    /// </summary>
    public void SlotElement(uint slot, ReadOnlySpan<byte> mac)
    {
        var s = Reserve(32);
        Nla(s, 32, 1 | 0x8000);            // NFTA_LIST_ELEM
        Nla(s[4..], 12, 1 | 0x8000);       // NFTA_SET_ELEM_KEY
        Nla(s[8..], 8, 1);                 // NFTA_DATA_VALUE
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], slot);
        Nla(s[16..], 16, 2 | 0x8000);      // NFTA_SET_ELEM_DATA
        Nla(s[20..], 10, 1);               // NFTA_DATA_VALUE
        mac.CopyTo(s[24..]);
        s[30] = 0;
        s[31] = 0;

        static void Nla(Span<byte> at, ushort length, ushort type)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(at, length);
            BinaryPrimitives.WriteUInt16LittleEndian(at[2..], type);
        }
    }

    /// <summary>An attribute header and room for <paramref name="length"/> bytes of value (padding zeroed); returns the value's span.</summary>
    private Span<byte> Attribute(ushort type, int length)
    {
        int padded = (length + 3) & ~3;
        var s = Reserve(4 + padded);
        BinaryPrimitives.WriteUInt16LittleEndian(s, (ushort)(4 + length));
        BinaryPrimitives.WriteUInt16LittleEndian(s[2..], type);
        s[(4 + length)..].Clear();
        return s.Slice(4, length);
    }

    private Span<byte> Reserve(int bytes)
    {
        if (_length + bytes > _buffer.Length) Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + bytes));
        var span = _buffer.AsSpan(_length, bytes);
        _length += bytes;
        return span;
    }
}
