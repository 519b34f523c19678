using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Linux;

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
        set is { Kind: "map", Dynamic: false, Content: SlotContent slots } && set.Declaration == TableRenderer.DsrDeclaration(slots.Length);
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
    public static StageResult Stage(NetlinkClient client, IReadOnlyList<StagedSet> sets, int maxBatchBytes = MaxBatchBytes)
    {
        int limit = Math.Min(maxBatchBytes, client.SendLimit);
        using var writer = new BatchWriter(limit);
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
                        if (!NfTablesReader.TableExists(client, group.Key.Family, group.Key.Table))
                        {
                            writer.Message(NFT_MSG_NEWTABLE, NetlinkFlags.Create | NetlinkFlags.Exclusive, family, w => w.Writer.WriteString(1, group.Key.Table), Send);   // NFTA_TABLE_NAME
                            pendingTables.Add(group.Key);
                        }
                        first = false;
                    }
                    writer.Message(NFT_MSG_NEWSET, NetlinkFlags.Create | NetlinkFlags.Exclusive, family, w => WriteMapDeclaration(w.Writer, staged.Table, staged.Set.Name, slots.Length, id), Send);
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
                try { Unstage(client, new StageResult(committed, madeTables), created); }
                catch (Exception e) when (e is NetlinkException or NetlinkTimeoutException) { }   // the next resync finds and removes them (sets no layout names)
            }
            throw;
        }

        void Send(BatchWriter full)
        {
            if (full.Finish() is not { } batch) return;
            client.ExecuteTransaction(batch.Buffer, Describe);
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
    public static void Unstage(NetlinkClient client, StageResult staging, IReadOnlyList<StagedSet> sets)
    {
        using var writer = new BatchWriter(int.MaxValue);
        foreach (var (family, table) in staging.TablesMade)
            writer.Message(NFT_MSG_DELTABLE, NetlinkFlags.None, NfTablesReader.FamilyNumber(family), w => w.Writer.WriteString(1, table), _ => { });
        foreach (var staged in sets)
        {
            if (staging.TablesMade.Contains((staged.Family, staged.Table))) continue;
            writer.Message(NFT_MSG_DELSET, NetlinkFlags.None, NfTablesReader.FamilyNumber(staged.Family), w =>
            {
                var n = w.Writer;
                n.WriteString(1, staged.Table);
                n.WriteString(2, staged.Set.Name);
            }, _ => { });
        }
        if (writer.Finish() is not { } batch) return;
        client.ExecuteTransaction(batch.Buffer, Describe);
    }

    /// <summary>Names the message an error answers: an nf_tables message, or the batch itself (a refused commit is answered against BATCH_BEGIN).</summary>
    internal static string Describe(ushort type) =>
        type >> 8 == NfNetlink.SubsystemNfTables ? $"nf_tables {NfNetlink.MessageName(type & 0xff)}" : "nf_tables transaction";

    /// <summary>
    /// NFT_MSG_NEWSET's attributes for <c>typeof numgen inc mod M : ether daddr; size M;</c>, in the
    /// order nft sends them: table, name, flags (map), key type and length (integer, 4 bytes), data
    /// type and length (ether_addr, 6 bytes), the set's id within the transaction (which the kernel
    /// requires, unique in the batch), description (size M), user data.
    /// </summary>
    internal static void WriteMapDeclaration(NetlinkWriter w, string table, string name, int slots, uint id)
    {
        w.WriteString(1, table);                         // NFTA_SET_TABLE
        w.WriteString(2, name);                          // NFTA_SET_NAME
        w.WriteUInt32BigEndian(3, NFT_SET_MAP);          // NFTA_SET_FLAGS
        w.WriteUInt32BigEndian(4, TYPE_INTEGER);         // NFTA_SET_KEY_TYPE
        w.WriteUInt32BigEndian(5, 4);                    // NFTA_SET_KEY_LEN
        w.WriteUInt32BigEndian(6, TYPE_ETHERADDR);       // NFTA_SET_DATA_TYPE
        w.WriteUInt32BigEndian(7, 6);                    // NFTA_SET_DATA_LEN
        w.WriteUInt32BigEndian(10, id);                  // NFTA_SET_ID
        var desc = w.BeginNested(9);                     // NFTA_SET_DESC
        w.WriteUInt32BigEndian(1, (uint)slots);          // NFTA_SET_DESC_SIZE
        w.EndNested(desc);
        w.WriteBytes(13, MapUserData(slots));            // NFTA_SET_USERDATA
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
            var start = writer.BeginMessage(NFT_MSG_NEWSETELEM, NetlinkFlags.Create | NetlinkFlags.Exclusive, family, full);
            var w = writer.Writer;
            w.WriteString(1, table);                  // NFTA_SET_ELEM_LIST_TABLE
            w.WriteString(2, set);                    // NFTA_SET_ELEM_LIST_SET
            var list = w.BeginNested(3);              // NFTA_SET_ELEM_LIST_ELEMENTS
            for (int n = 0; n < ElementsPerMessage && slot < slots.Length; slot++)
            {
                var value = slots.ValueAt(slot);
                if (value is null) continue;
                if (!ReferenceEquals(value, last)) { ParseMac(value, mac); last = value; }
                writer.SlotElement((uint)slot, mac);
                n++;
            }
            w.EndNested(list);
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
/// Puts nf_tables messages into nfnetlink batches (BATCH_BEGIN, messages, BATCH_END) in one
/// <see cref="NetlinkBuffer"/>, encoded by Merlin.Linux's <see cref="NetlinkWriter"/>. When the
/// next message would make the batch longer than its limit, the batch so far is handed to the
/// caller's send first. The last message of a batch asks for an acknowledgement (NLM_F_ACK).
/// Sequence numbers and port ids are left zero: <see cref="NetlinkClient.ExecuteTransaction"/> stamps them.
/// </summary>
internal sealed class BatchWriter(int limit) : IDisposable
{
    private const ushort NFNL_MSG_BATCH_BEGIN = 0x10, NFNL_MSG_BATCH_END = 0x11;
    private readonly NetlinkBuffer _buffer = new(Math.Min(limit, 256 << 10));
    private MessageMark? _last;
    private bool _finished;

    /// <summary>Writes the attributes of the message begun last.</summary>
    public NetlinkWriter Writer => new(_buffer);

    /// <summary>A message of no more than 64 KiB: the buffer is sent first if it would not fit.</summary>
    public void Message(byte type, NetlinkFlags flags, byte family, Action<BatchWriter> attributes, Action<BatchWriter> full)
    {
        var mark = BeginMessage(type, flags, family, full);
        attributes(this);
        EndMessage(mark);
    }

    /// <summary>Hands the batch so far to <paramref name="full"/> unless <paramref name="messages"/> more messages of up to 64 KiB each fit after it.</summary>
    public void MakeRoom(int messages, Action<BatchWriter> full)
    {
        StartOver();
        if (_buffer.Length > 0 && _buffer.Length + messages * (64 << 10) + 2 * 20 > limit) full(this);
    }

    /// <summary>Starts a message; <paramref name="full"/> gets the batch so far when this one might not fit (a message is at most 64 KiB).</summary>
    public MessageMark BeginMessage(byte type, NetlinkFlags flags, byte family, Action<BatchWriter> full)
    {
        MakeRoom(1, full);
        StartOver();
        if (_buffer.Length == 0) Control(NFNL_MSG_BATCH_BEGIN);
        var w = Writer;
        var mark = w.BeginMessage((ushort)(NfNetlink.SubsystemNfTables << 8 | type), NetlinkFlags.Request | flags);
        w.WriteNetfilterHeader(family, 0);
        return mark;
    }

    public void EndMessage(MessageMark mark)
    {
        Writer.EndMessage(mark);
        _last = mark;
    }

    /// <summary>
    /// Closes the batch (its last message asks for an acknowledgement) and returns it; null if it holds no
    /// message. The batch stays in the buffer until the next message is begun: send it first.
    /// </summary>
    public Batch? Finish()
    {
        StartOver();
        if (_last is not { } last)
        {
            _buffer.Clear();
            return null;
        }
        Writer.AddFlags(last, NetlinkFlags.Ack);
        Control(NFNL_MSG_BATCH_END);
        _last = null;
        _finished = true;
        return new Batch(_buffer);
    }

    /// <summary>A finished batch, in the writer's buffer.</summary>
    public readonly record struct Batch(NetlinkBuffer Buffer)
    {
        public ReadOnlyMemory<byte> Bytes => Buffer.WrittenMemory;
    }

    /// <summary>Drops a batch handed out by <see cref="Finish"/> (sent by now) before the next is written.</summary>
    private void StartOver()
    {
        if (!_finished) return;
        _buffer.Clear();
        _finished = false;
    }

    /// <summary>BATCH_BEGIN or BATCH_END: AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES.</summary>
    private void Control(ushort type)
    {
        var w = Writer;
        var mark = w.BeginMessage(type, NetlinkFlags.Request);
        w.WriteNetfilterHeader(0, NfNetlink.SubsystemNfTables);
        w.EndMessage(mark);
    }

    /// <summary>
    /// One element of a slot → MAC map: NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE u32 (host
    /// order) }, NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE 6 bytes } }, 32 bytes.
    /// </summary>
    public void SlotElement(uint slot, ReadOnlySpan<byte> mac)
    {
        var w = Writer;
        var element = w.BeginNested(1);   // NFTA_LIST_ELEM
        var key = w.BeginNested(1);       // NFTA_SET_ELEM_KEY
        w.WriteUInt32(1, slot);           // NFTA_DATA_VALUE
        w.EndNested(key);
        var data = w.BeginNested(2);      // NFTA_SET_ELEM_DATA
        w.WriteBytes(1, mac);             // NFTA_DATA_VALUE
        w.EndNested(data);
        w.EndNested(element);
    }

    public void Dispose() => _buffer.Dispose();
}
