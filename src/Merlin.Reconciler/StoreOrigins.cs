using Merlin.Store;

namespace Merlin.Reconciler;

/// <summary>
/// Records in the store that a Merlin that marks its writes did not write last (<see cref="StoredService.WrittenByMerlin"/>): a Go
/// merlin's, or an older Merlin's; and server keys whose service does not exist (etcd, a Go merlin's service del).
/// Counted from the snapshot the reconciler reads anyway, so a mixed fleet is told without another store read.
/// </summary>
public sealed record StoreOrigins(int ServicesNotByMerlin, int ServersNotByMerlin, int OrphanedServers)
{
    public static StoreOrigins Count(StoreSnapshot snapshot)
    {
        int services = 0, servers = 0;
        foreach (var item in snapshot.Items)
        {
            if (!item.Service.WrittenByMerlin) services++;
            foreach (var server in item.Servers)
                if (!server.WrittenByMerlin) servers++;
        }
        return new StoreOrigins(services, servers, snapshot.OrphanedServers);
    }
}
