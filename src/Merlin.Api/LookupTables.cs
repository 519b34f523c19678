using System.Net;
using Merlin.Hashing;
using Merlin.Model;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

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
    /// <summary>
    /// How long a slot's previous owner is kept for second chance after the slot moved (a draining previous owner
    /// is kept until it is removed, however long that is): long enough for most long-lived connections to have
    /// met a load-balancer change, short enough that stray packets are refused by their last owner soon.
    /// </summary>
    public static readonly TimeSpan DefaultWindow = TimeSpan.FromHours(1);

    /// <summary>The deriver with the system clock and <see cref="DefaultWindow"/>.</summary>
    public static byte[]? Derive(StoredService service, IReadOnlyList<StoredServer> servers, byte[]? previous) =>
        Derive(service, servers, previous, TimeProvider.System.GetUtcNow(), DefaultWindow);

    /// <summary>A deriver that keeps previous owners for <paramref name="window"/> by <paramref name="time"/>'s clock.</summary>
    public static Store.ServiceTableDeriver Deriver(TimeProvider time, TimeSpan window) =>
        (service, servers, previous) => Derive(service, servers, previous, time.GetUtcNow(), window);

    /// <summary>
    /// The record (version 2: the table and its previous owners, <see cref="TableRecord"/>) that follows
    /// <paramref name="previous"/>, or null for a service that keeps no table.
    /// </summary>
    public static byte[]? Derive(StoredService service, IReadOnlyList<StoredServer> servers, byte[]? previous, DateTimeOffset now, TimeSpan window)
    {
        if (!KeepsTable(service)) return null;
        TableRecord? before = null;
        if (previous is not null)
        {
            try { before = TableRecord.Decode(previous); }
            catch (TableFormatException) { before = null; }
        }
        return TableRecord.Next(before, Members(servers.Select(StoredRecords.Message).ToList()), now, window).Encode();
    }

    /// <summary>Whether the service keeps a table (an md-table service with a valid record): for any other, <see cref="Derive(StoredService, IReadOnlyList{StoredServer}, byte[], DateTimeOffset, TimeSpan)"/> returns null whatever its servers.</summary>
    public static bool KeepsTable(StoredService service) =>
        WireMapper.TryToModel(StoredRecords.Message(service), out var model) is null && Schedulers.UsesStoredTable(model!.Config);

    /// <summary>
    /// What List tells of a service's stored table: its hash (the table's, which every node shows in <c>meradm status</c>
    /// for the table it programs), or why there is none to show. Both empty for a service that keeps no table.
    /// </summary>
    public static (string Hash, string Problem) Describe(Wire.VirtualService service, byte[]? stored)
    {
        if (WireMapper.TryToModel(service, out var model) is not null || !Schedulers.UsesStoredTable(model!.Config)) return ("", "");
        if (stored is null) return ("", "no table stored yet (the service or its servers were last written past Merlin's API)");
        try { return (TableRecord.Decode(stored).Current.HashText, ""); }
        catch (TableFormatException e) { return ("", $"damaged ({e.Message})"); }
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
