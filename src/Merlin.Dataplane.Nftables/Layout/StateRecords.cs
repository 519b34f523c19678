using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Model;
using Merlin.Reconciler;

namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>
/// The programmed state, kept in the kernel beside what it programs: one element per service and per
/// real server in the <c>state</c> set, the record in the element's comment. A daemon that restarts
/// reads it back (one small set, never the big maps) and adopts the tables as they are, with no
/// rewrite and no lost pinned flow. A comment holds at most 128 characters, so a longer record is
/// split: element key = record id × 16 + chunk.
/// </summary>
internal static class StateRecords
{
    internal const int ChunkLength = 120;
    private const int MaxChunks = 16;

    public sealed record Decoded(
        Dictionary<ServiceKey, ServiceState> Services,
        Dictionary<IPAddress, PhysicalAddress> Macs,
        Dictionary<ServiceKey, string> Groups,
        Dictionary<ServiceKey, uint> ServiceIds,
        Dictionary<(ServiceKey, RealServerKey), uint> ServerIds);

    public static string Service(uint id, ServiceKey key, ServiceConfig config, string? group) => string.Join(' ',
        "s", Num(id), key.Protocol.ToString().ToLowerInvariant(),
        key.IsFirewallMark ? $"fwm:{Num(key.FirewallMark)}:{(key.Family == IpFamily.V6 ? 6 : 4)}" : key.Address!.ToString(),
        Num(key.Port), config.Scheduler, Num((uint)config.Flags), Num(config.PersistenceTimeout), Num(config.PersistenceNetmask),
        config.OnePacket ? "1" : "0", group ?? "-");

    public static string Server(uint id, uint serviceId, RealServerKey key, RealServerConfig config, PhysicalAddress? mac) => string.Join(' ',
        "r", Num(id), Num(serviceId), key.Address.ToString(), Num(key.Port), Num(config.Weight), Num((uint)config.Forward),
        Num((uint)config.TunnelType), Num(config.TunnelPort), Num((uint)config.TunnelFlags), Num(config.UpperThreshold), Num(config.LowerThreshold),
        mac is null ? "-" : MacText(mac));

    /// <summary>The elements of one record: key and whole element text.</summary>
    public static IEnumerable<(string Key, string Element)> Elements(uint id, string record)
    {
        if (record.Contains('"') || record.Contains('\\')) throw new ArgumentException($"record \"{record}\" cannot be a comment");
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
        var services = new Dictionary<uint, (ServiceKey Key, ServiceConfig Config, string? Group, Dictionary<RealServerKey, RealServerConfig> Servers)>();
        var result = new Decoded(new(), new(), new(), new(), new());
        foreach (var (id, text) in records.Where(r => r.Text.StartsWith("s ", StringComparison.Ordinal)))
        {
            var f = Fields(text, 11);
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
            var config = new ServiceConfig
            {
                Scheduler = f[5],
                Flags = (SchedulerFlags)ParseUInt(f[6], text),
                PersistenceTimeout = ParseUInt(f[7], text),
                PersistenceNetmask = (byte)ParseUInt(f[8], text),
                OnePacket = f[9] == "1",
            };
            var group = f[10] == "-" ? null : f[10];
            services[id] = (key, config, group, new());
            result.ServiceIds[key] = id;
            if (group is not null) result.Groups[key] = group;
        }
        foreach (var (id, text) in records.Where(r => r.Text.StartsWith("r ", StringComparison.Ordinal)))
        {
            var f = Fields(text, 13);
            if (!services.TryGetValue(ParseUInt(f[2], text), out var service)) throw new FormatException($"state record \"{text}\" names a service that has no record");
            if (!IPAddress.TryParse(f[3], out var address)) throw Bad(text);
            var key = new RealServerKey(address, (ushort)ParseUInt(f[4], text));
            service.Servers[key] = new RealServerConfig
            {
                Weight = ParseUInt(f[5], text),
                Forward = (ForwardMethod)ParseUInt(f[6], text),
                TunnelType = (TunnelType)ParseUInt(f[7], text),
                TunnelPort = (ushort)ParseUInt(f[8], text),
                TunnelFlags = (TunnelFlags)ParseUInt(f[9], text),
                UpperThreshold = ParseUInt(f[10], text),
                LowerThreshold = ParseUInt(f[11], text),
            };
            result.ServerIds[(service.Key, key)] = id;
            if (f[12] != "-") result.Macs[address] = PhysicalAddress.Parse(f[12].Replace(':', '-'));
        }
        if (records.Any(r => !r.Text.StartsWith("s ", StringComparison.Ordinal) && !r.Text.StartsWith("r ", StringComparison.Ordinal)))
            throw new FormatException("the state set holds a record this version did not write");
        foreach (var (_, s) in services) result.Services[s.Key] = new ServiceState(s.Key, s.Config, s.Servers);
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
