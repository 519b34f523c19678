using Merlin.Linux;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// nf_tables over Merlin.Linux's one netlink client (NETLINK_NETFILTER): opening it, and the "get"
/// requests the readers make (every one names its objects by string attributes only).
/// </summary>
internal static class NfNetlink
{
    /// <summary>NFNL_SUBSYS_NFTABLES: the high byte of every nf_tables message type.</summary>
    public const ushort SubsystemNfTables = 10;

    /// <summary>
    /// A client in the named network namespace (null: this process's own). Its send buffer holds the
    /// largest staging transaction (<see cref="SetStaging.MaxBatchBytes"/>, sent as one datagram), raised
    /// past the system's limit with SO_SNDBUFFORCE (CAP_NET_ADMIN, which nftables needs anyway); a
    /// receive takes a datagram of up to 256 KiB.
    /// </summary>
    public static NetlinkClient Open(string? networkNamespace) => NetlinkClient.Open(Merlin.Linux.Netlink.ProtocolNetfilter, new NetlinkSocketOptions
    {
        NetworkNamespace = networkNamespace,
        SendBufferSize = SetStaging.MaxBatchBytes + (64 << 10),
        MaxDatagramSize = 256 << 10,
    });

    /// <summary>
    /// Sends an nf_tables request of <paramref name="type"/> (NFT_MSG_GET*) for <paramref name="family"/>
    /// naming <paramref name="table"/> (attribute 1 of every kind of object) and an object in it
    /// (<paramref name="name"/> as attribute <paramref name="nameAttribute"/>), and returns the attributes (after nfgenmsg) of every reply: one
    /// object, or all of a dump. A kernel error is a <see cref="NetlinkException"/> (ENOENT: no such object).
    /// </summary>
    public static List<byte[]> Request(NetlinkClient client, byte type, byte family, bool dump, string? table = null, ushort nameAttribute = 0, string? name = null)
    {
        using var buffer = new NetlinkBuffer();
        var w = new NetlinkWriter(buffer);
        var mark = w.BeginMessage((ushort)(SubsystemNfTables << 8 | type), NetlinkFlags.None);
        w.WriteNetfilterHeader(family, 0);
        if (table is not null) w.WriteString(1, table);
        if (name is not null) w.WriteString(nameAttribute, name);
        w.EndMessage(mark);
        var replies = new List<byte[]>();
        var what = $"nf_tables {MessageName(type)}";
        if (dump) client.Dump(buffer, what, Collect, replies);
        else client.Execute(buffer, what, Collect, replies);
        return replies;
    }

    private static void Collect(NetlinkMessage message, List<byte[]> replies)
    {
        if (message.Payload.Length >= 4) replies.Add(message.Payload[4..].ToArray());   // after struct nfgenmsg
    }

    /// <summary>NFT_MSG_* by number, for error messages ("nf_tables NEWSET: EEXIST (File exists)").</summary>
    public static string MessageName(int type) => type switch
    {
        0 => "NEWTABLE", 1 => "GETTABLE", 2 => "DELTABLE",
        3 => "NEWCHAIN", 4 => "GETCHAIN", 5 => "DELCHAIN",
        6 => "NEWRULE", 7 => "GETRULE", 8 => "DELRULE",
        9 => "NEWSET", 10 => "GETSET", 11 => "DELSET",
        12 => "NEWSETELEM", 13 => "GETSETELEM", 14 => "DELSETELEM",
        15 => "NEWGEN", 16 => "GETGEN",
        _ => $"message {type}",
    };
}
