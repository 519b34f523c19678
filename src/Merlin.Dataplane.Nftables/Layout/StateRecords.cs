using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// The programmed state, kept in the kernel beside what it programs, as records in the element
/// comments of the <c>state</c> set. A daemon that restarts reads it back (one small set, never the
/// big maps) and adopts the tables as they are, with no rewrite and no lost pinned flow.
/// <para>
/// The records are normalized so that a change touches as few of them as it can. A real server's
/// configuration (address, port, weight, forwarding, MAC) is one <c>r</c> record shared by every
/// service that has that server with that configuration; a service's set of real servers is one
/// <c>l</c> record (the list of their record ids) shared by every service with the same set; a
/// service is one <c>s</c> record naming its list. So when the weight of an ingress node that all
/// 1,000 services share changes, one <c>r</c> record changes (its id is kept), not 1,000.
/// </para>
/// A comment holds at most 128 characters, so a longer record is split: element key = record id ×
/// 256 + chunk.
/// </summary>
internal static class StateRecords
{
    internal const int ChunkLength = 120;
    internal const int MaxChunks = 256;

    /// <summary>The largest record id: the element key (a 32-bit mark) is id × <see cref="MaxChunks"/> + chunk.</summary>
    internal const uint MaxId = uint.MaxValue / MaxChunks;

    public sealed record Decoded(
        Dictionary<ServiceKey, ServiceState> Services,
        Dictionary<IPAddress, PhysicalAddress> Macs,
        Dictionary<ServiceKey, string> Groups,
        Dictionary<ServiceKey, uint> ServiceIds,
        Dictionary<(ServiceKey, RealServerKey), uint> ServerIds,
        Dictionary<ServiceKey, uint> ListIds);

    /// <summary>A service record: <c>s id proto address port scheduler flags persistence netmask one-packet group list</c>.</summary>
    public static string Service(uint id, ServiceKey key, ServiceConfig config, string? group, uint? list) => string.Join(' ',
        "s", Num(id), key.Protocol.ToString().ToLowerInvariant(),
        key.IsFirewallMark ? $"fwm:{Num(key.FirewallMark)}:{(key.Family == IpFamily.V6 ? 6 : 4)}" : key.Address!.ToString(),
        Num(key.Port), config.Scheduler, Num((uint)config.Flags), Num(config.PersistenceTimeout), Num(config.PersistenceNetmask),
        config.OnePacket ? "1" : "0", group ?? "-", list is { } l ? Num(l) : "-");

    /// <summary>What a real server record says, without its id: <c>address port weight forward tunnel-type tunnel-port tunnel-flags upper lower mac</c>.</summary>
    public static string ServerBody(RealServerKey key, RealServerConfig config, string? mac) => string.Join(' ',
        key.Address.ToString(), Num(key.Port), Num(config.Weight), Num((uint)config.Forward),
        Num((uint)config.TunnelType), Num(config.TunnelPort), Num((uint)config.TunnelFlags), Num(config.UpperThreshold), Num(config.LowerThreshold),
        mac ?? "-");

    public static string Server(uint id, string body) => $"r {Num(id)} {body}";

    /// <summary>A list record: <c>l id server-id,server-id,…</c> (ascending).</summary>
    public static string List(uint id, string members) => $"l {Num(id)} {members}";

    /// <summary>The elements of one record: key and whole element text.</summary>
    public static IEnumerable<(string Key, string Element)> Elements(uint id, string record)
    {
        if (record.Contains('"') || record.Contains('\\')) throw new ArgumentException($"record \"{record}\" cannot be a comment");
        if (id is 0 or > MaxId) throw new ArgumentException($"record id {id} is out of range");
        int chunks = Math.Max(1, (record.Length + ChunkLength - 1) / ChunkLength);
        if (chunks > MaxChunks) throw new ArgumentException($"record of {record.Length} characters is too long");
        for (int i = 0; i < chunks; i++)
        {
            var key = Num(id * MaxChunks + (uint)i);
            var text = record.Substring(i * ChunkLength, Math.Min(ChunkLength, record.Length - i * ChunkLength));
            yield return (key, $"{key} comment \"{text}\"");
        }
    }

    /// <summary>Rebuilds the state from the (key, comment) pairs of the state set. Throws <see cref="FormatException"/> on anything it did not write.</summary>
    public static Decoded Decode(IEnumerable<(uint Key, string Comment)> elements)
    {
        var records = elements.GroupBy(e => e.Key / MaxChunks)
            .Select(g => (Id: g.Key, Text: string.Concat(g.OrderBy(e => e.Key).Select(e => e.Comment))))
            .OrderBy(r => r.Id)
            .ToList();
        if (records.Any(r => !(r.Text.StartsWith("s ", StringComparison.Ordinal) || r.Text.StartsWith("r ", StringComparison.Ordinal) || r.Text.StartsWith("l ", StringComparison.Ordinal))))
            throw new FormatException("the state set holds a record this version did not write");

        var servers = new Dictionary<uint, (RealServerKey Key, RealServerConfig Config, PhysicalAddress? Mac)>();
        foreach (var (id, text) in records.Where(r => r.Text.StartsWith("r ", StringComparison.Ordinal)))
        {
            var f = Fields(text, 12);
            if (ParseUInt(f[1], text) != id) throw Bad(text);
            if (!IPAddress.TryParse(f[2], out var address)) throw Bad(text);
            var config = new RealServerConfig
            {
                Weight = ParseUInt(f[4], text),
                Forward = (ForwardMethod)ParseUInt(f[5], text),
                TunnelType = (TunnelType)ParseUInt(f[6], text),
                TunnelPort = (ushort)ParseUInt(f[7], text),
                TunnelFlags = (TunnelFlags)ParseUInt(f[8], text),
                UpperThreshold = ParseUInt(f[9], text),
                LowerThreshold = ParseUInt(f[10], text),
            };
            PhysicalAddress? mac = f[11] == "-" ? null : PhysicalAddress.Parse(f[11].Replace(':', '-'));
            servers[id] = (new RealServerKey(address, (ushort)ParseUInt(f[3], text)), config, mac);
        }

        var lists = new Dictionary<uint, uint[]>();
        foreach (var (id, text) in records.Where(r => r.Text.StartsWith("l ", StringComparison.Ordinal)))
        {
            var f = Fields(text, 3);
            if (ParseUInt(f[1], text) != id) throw Bad(text);
            lists[id] = f[2].Split(',').Select(m => ParseUInt(m, text)).ToArray();
        }

        var result = new Decoded(new(), new(), new(), new(), new(), new());
        foreach (var (id, text) in records.Where(r => r.Text.StartsWith("s ", StringComparison.Ordinal)))
        {
            var f = Fields(text, 12);
            if (ParseUInt(f[1], text) != id) throw Bad(text);
            var protocol = f[2] switch { "tcp" => Protocol.Tcp, "udp" => Protocol.Udp, "sctp" => Protocol.Sctp, _ => throw Bad(text) };
            ServiceKey key;
            if (f[3].StartsWith("fwm:", StringComparison.Ordinal))
            {
                var parts = f[3].Split(':');
                if (parts.Length != 3) throw Bad(text);
                key = ServiceKey.ForFirewallMark(ParseUInt(parts[1], text), parts[2] == "6" ? IpFamily.V6 : IpFamily.V4, protocol);
            }
            else
            {
                if (!IPAddress.TryParse(f[3], out var address)) throw Bad(text);
                key = ServiceKey.ForAddress(address, (ushort)ParseUInt(f[4], text), protocol);
            }
            if (result.ServiceIds.ContainsKey(key)) throw new FormatException($"state record \"{text}\" repeats a service");
            var config = new ServiceConfig
            {
                Scheduler = f[5],
                Flags = (SchedulerFlags)ParseUInt(f[6], text),
                PersistenceTimeout = ParseUInt(f[7], text),
                PersistenceNetmask = (byte)ParseUInt(f[8], text),
                OnePacket = f[9] == "1",
            };
            var members = new Dictionary<RealServerKey, RealServerConfig>();
            if (f[11] != "-")
            {
                var list = ParseUInt(f[11], text);
                if (!lists.TryGetValue(list, out var ids)) throw new FormatException($"state record \"{text}\" names a server list that has no record");
                result.ListIds[key] = list;
                foreach (var sid in ids)
                {
                    if (!servers.TryGetValue(sid, out var server)) throw new FormatException($"server list {list} names a server that has no record ({sid})");
                    if (!members.TryAdd(server.Key, server.Config)) throw new FormatException($"server list {list} names {server.Key} twice");
                    result.ServerIds[(key, server.Key)] = sid;
                    if (server.Mac is not null) result.Macs[server.Key.Address] = server.Mac;
                }
            }
            if (f[10] != "-") result.Groups[key] = f[10];
            result.ServiceIds[key] = id;
            result.Services[key] = new ServiceState(key, config, members);
        }
        return result;
    }

    public static string MacText(PhysicalAddress mac) => string.Join(':', mac.GetAddressBytes().Select(b => b.ToString("x2", CultureInfo.InvariantCulture)));

    private static string[] Fields(string text, int count)
    {
        var f = text.Split(' ');
        if (f.Length != count) throw Bad(text);
        return f;
    }

    private static uint ParseUInt(string text, string record) =>
        uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : throw Bad(record);

    private static FormatException Bad(string record) => new($"state record \"{record}\" is not one this version writes");

    private static string Num(uint value) => value.ToString(CultureInfo.InvariantCulture);
}
