using System.Net;
using Merlin.Hashing;
using Merlin.Model;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Wire;
using Wire = Merlin.Wire;

namespace Merlin.Api;

/// <summary>
/// The API's side of the minimal-disruption table: the <see cref="Store.ServiceTableDeriver"/> the daemon
/// gives its store, so every write that changes a service with <c>md-table</c> stores the table that follows
/// the previous one, in the same transaction. Servers are identified by endpoint (<c>ip:port</c>,
/// <c>[v6]:port</c>) with their effective weight (0 while draining), drained ones included so a drain never
/// changes M. A stored table that cannot be read (damaged, wrong size: <see cref="TableFormatException"/>)
/// is replaced by one computed from nothing, which every node would compute the same.
/// </summary>
public static class LookupTables
{
    public static byte[]? Derive(StoredService service, IReadOnlyList<StoredServer> servers, byte[]? previous)
    {
        if (WireMapper.TryToModel(StoredRecords.Message(service), out var model) is not null || !Schedulers.UsesStoredTable(model!.Config)) return null;
        MinimalDisruptionTable? before = null;
        if (previous is not null)
        {
            try { before = MinimalDisruptionTable.Decode(previous); }
            catch (TableFormatException) { before = null; }
        }
        return MinimalDisruptionTable.Next(before, Members(servers.Select(StoredRecords.Message).ToList())).Encode();
    }

    /// <summary>The (endpoint, effective weight) of each server whose key can be read; the same rule the dataplane reads the table with.</summary>
    public static List<(string Id, uint Weight)> Members(IReadOnlyList<Wire.RealServer> servers)
    {
        var members = new List<(string, uint)>(servers.Count);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in servers)
        {
            if (s.Key is null || !IPAddress.TryParse(s.Key.Ip, out var address) || s.Key.Port > ushort.MaxValue) continue;
            var id = Endpoints.Format(address, (ushort)s.Key.Port);
            if (seen.Add(id)) members.Add((id, s.DrainDeadline is null ? s.Config?.Weight ?? 0 : 0));
        }
        return members;
    }
}
