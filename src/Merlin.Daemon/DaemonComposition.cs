using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Store.Etcd;
using Merlin.Store.Sqlite;

namespace Merlin.Daemon;

/// <summary>
/// The daemon's choices between the parts a flag names (which store, which dataplane, which announcer): each part
/// registers itself (AddNftablesDataplane, AddBgpAnnouncer, AddMerlinHealth, …); these pick one from a section.
/// </summary>
public static class DaemonComposition
{
    /// <summary>
    /// The store <see cref="StoreSection.Backend"/> names; the API computes each md-table service's table in the store
    /// transaction of its write, keeping previous owners for <see cref="StoreSection.SecondChanceWindow"/>.
    /// </summary>
    public static IServiceCollection AddMerlinStore(this IServiceCollection services, StoreSection store) =>
        services.AddSingleton<IStore>(provider =>
        {
            var deriveTable = Merlin.Api.LookupTables.Deriver(provider.GetService<TimeProvider>() ?? TimeProvider.System, store.SecondChanceWindow);
            if (store.Backend == "sqlite")
            {
                var dir = Path.GetDirectoryName(Path.GetFullPath(store.Path));
                if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
                return new SqliteStore(store.Path, new SqliteStoreOptions { DeriveTable = deriveTable });
            }
            return new EtcdStore(new EtcdStoreOptions { Endpoints = store.Endpoints, Prefix = store.Prefix, Timeout = store.Timeout, DeriveTable = deriveTable,
                KeepsTable = Merlin.Api.LookupTables.KeepsTable, ChannelLogging = provider.GetService<Microsoft.Extensions.Logging.ILoggerFactory>() });
        });

    /// <summary>
    /// The dataplane <see cref="DataplaneSection.Kind"/> names, in <paramref name="networkNamespace"/>; <c>auto</c> is
    /// IPVS when the kernel has it (the seed's dataplane), else nftables. IPVS remembers the services it created in
    /// <paramref name="stateDir"/>.
    /// </summary>
    public static IServiceCollection AddMerlinDataplane(this IServiceCollection services, DataplaneSection dataplane, string? networkNamespace, string stateDir) =>
        Resolve(dataplane.Kind, networkNamespace) switch
        {
            "none" => services.AddSingleton<IDataplane, InMemoryDataplane>(),
            "ipvs" => services.AddIpvsDataplane(new Merlin.Dataplane.Ipvs.IpvsDataplaneOptions
            {
                OwnWholeTable = dataplane.IpvsOwnAll,
                ManageSysctls = dataplane.ManageSysctls,
                OwnershipFile = Path.Combine(stateDir, "ipvs-owned-services"),
                NetworkNamespace = networkNamespace,
            }),
            "nftables" => services.AddNftablesDataplane(new Merlin.Dataplane.Nftables.NftablesOptions
            {
                HashSeed = dataplane.HashSeed ?? throw new OptionsException("--hash-seed: required with the nftables dataplane, and the same on every node (e.g. 0x5eed1234)"),
                Interface = dataplane.Interface,
                NetworkNamespace = networkNamespace,
            }),
            _ => throw new OptionsException($"--dataplane: {Validation.Quote(dataplane.Kind)} is not available in this build (one of {string.Join(", ", DaemonOptions.Dataplanes)})"),
        };

    /// <summary>The announcer <see cref="AnnouncerSection.Mode"/> names (its engine's settings were built and checked with the section).</summary>
    public static IServiceCollection AddMerlinAnnouncer(this IServiceCollection services, AnnouncerSection announcer) => (announcer.Vrrp, announcer.Bgp) switch
    {
        ({ } vrrp, _) => services.AddVrrpAnnouncer(vrrp),
        (_, { } bgp) => services.AddBgpAnnouncer(bgp),
        _ => services.AddStaticAnnouncer(),
    };

    private static string Resolve(string kind, string? networkNamespace) =>
        kind != "auto" ? kind : Merlin.Ipvs.IpvsClient.IsAvailable(networkNamespace) ? "ipvs" : "nftables";
}
