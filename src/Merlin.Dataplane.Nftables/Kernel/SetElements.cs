using Merlin.Linux;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>One element of a set or map as the kernel holds it: the key's bytes and, for a map, the value's.</summary>
internal sealed record SetElement(byte[] Key, byte[] Value);

/// <summary>
/// A set's elements read and deleted by key over netlink: how the dataplane sweeps stale pins out of the dynamic
/// flow maps, which the packet path fills (nft would list them as text, and parse a deletion's keys back from text).
/// </summary>
internal static class SetElements
{
    private const byte NFT_MSG_GETSETELEM = 13, NFT_MSG_DELSETELEM = 14, NFT_MSG_DESTROYSETELEM = 30;

    /// <summary>Keys per DELSETELEM message: the element list is one attribute, whose length is 16 bits (at most 32 bytes a key here).</summary>
    internal const int KeysPerMessage = 1024;

    /// <summary>Every element of <paramref name="set"/> (a dump; the kernel leaves expired ones out); empty if the set does not exist.</summary>
    public static List<SetElement> Read(NetlinkClient client, string family, string table, string set)
    {
        List<byte[]> replies;
        try
        {
            replies = NfNetlink.Request(client, NFT_MSG_GETSETELEM, NfTablesReader.FamilyNumber(family), dump: true, table, 2, set);   // NFTA_SET_ELEM_LIST_SET
        }
        catch (NetlinkException e) when (e.Errno == Errno.ENOENT)
        {
            return [];
        }
        var elements = new List<SetElement>();
        foreach (var reply in replies) Parse(reply, elements);
        return elements;
    }

    /// <summary>The elements of one GETSETELEM reply (its attributes after nfgenmsg).</summary>
    internal static void Parse(ReadOnlySpan<byte> reply, List<SetElement> into)
    {
        foreach (var list in new AttributeReader(reply))
        {
            if (list.Type != 3) continue;                                   // NFTA_SET_ELEM_LIST_ELEMENTS
            foreach (var element in list.GetAttributes())
            {
                if (element.Type != 1) continue;                            // NFTA_LIST_ELEM
                byte[]? key = null, value = null;
                foreach (var a in element.GetAttributes())
                {
                    if (a.Type == 1) key = DataValue(a);                    // NFTA_SET_ELEM_KEY
                    else if (a.Type == 2) value = DataValue(a);             // NFTA_SET_ELEM_DATA
                }
                if (key is null) throw new InvalidDataException("a set element without NFTA_SET_ELEM_KEY");
                into.Add(new SetElement(key, value ?? []));
            }
        }

        static byte[]? DataValue(NetlinkAttribute nested)
        {
            foreach (var a in nested.GetAttributes())
                if (a.Type == 1) return a.Payload.ToArray();                // NFTA_DATA_VALUE
            return null;
        }
    }

    /// <summary>
    /// Deletes the elements with <paramref name="keys"/> from <paramref name="set"/>, in as few transactions as the
    /// send buffer allows, and returns how many it committed. Null if the kernel refused a transaction because one of
    /// its keys was gone already (it expired since it was read): that transaction deleted nothing, those before it
    /// stay done; read again and retry. With <paramref name="evenIfGone"/>, keys that are gone are passed over
    /// (NFT_MSG_DESTROYSETELEM, Linux 6.3 and later; an older kernel refuses the message: <see cref="NotSupportedException"/>).
    /// </summary>
    public static int? Delete(NetlinkClient client, string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone = false)
    {
        if (keys.Count == 0) return 0;
        int commits = 0;
        byte f = NfTablesReader.FamilyNumber(family);
        using var writer = new BatchWriter(Math.Min(SetStaging.MaxBatchBytes, client.SendLimit));
        try
        {
            for (int i = 0; i < keys.Count;)
            {
                var start = writer.BeginMessage(evenIfGone ? NFT_MSG_DESTROYSETELEM : NFT_MSG_DELSETELEM, NetlinkFlags.None, f, Send);
                var w = writer.Writer;
                w.WriteString(1, table);                  // NFTA_SET_ELEM_LIST_TABLE
                w.WriteString(2, set);                    // NFTA_SET_ELEM_LIST_SET
                var list = w.BeginNested(3);              // NFTA_SET_ELEM_LIST_ELEMENTS
                for (int n = 0; n < KeysPerMessage && i < keys.Count; n++, i++)
                {
                    var element = w.BeginNested(1);       // NFTA_LIST_ELEM
                    var key = w.BeginNested(1);           // NFTA_SET_ELEM_KEY
                    w.WriteBytes(1, keys[i]);             // NFTA_DATA_VALUE
                    w.EndNested(key);
                    w.EndNested(element);
                }
                w.EndNested(list);
                writer.EndMessage(start);
            }
            Send(writer);
            return commits;
        }
        catch (NetlinkException e) when (e.Errno == Errno.ENOENT && !evenIfGone)
        {
            return null;
        }
        catch (NetlinkException e) when (evenIfGone && e.Errno is Errno.EINVAL or Errno.EOPNOTSUPP && commits == 0)
        {
            throw new NotSupportedException($"this kernel does not delete set elements that may be gone (NFT_MSG_DESTROYSETELEM): {e.Message}", e);
        }

        void Send(BatchWriter full)
        {
            if (full.Finish() is not { } batch) return;
            client.ExecuteTransaction(batch.Buffer, SetStaging.Describe);
            commits++;
        }
    }
}
