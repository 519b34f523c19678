using Merlin.Store.Etcd;

namespace Merlin.Store.Tests;

/// <summary>The contract against a real etcd: one server for the class, a fresh prefix per test.</summary>
public sealed class EtcdStoreContractTests(EtcdFixture etcd) : StoreContractTests, IClassFixture<EtcdFixture>
{
    private readonly string _prefix = $"/merlin-test/{Guid.NewGuid():N}";

    protected override Task<IStore> OpenAsync() =>
        Task.FromResult<IStore>(new EtcdStore(new EtcdStoreOptions
        {
            Endpoints = [etcd.Server.Endpoint],
            Prefix = _prefix,
            Timeout = TimeSpan.FromSeconds(5),
            PageSize = 4, // small pages, so List's paging at one revision is exercised
        }));

    protected override Task CompactAsync(IStore store, long revision) => ((EtcdStore)store).CompactAsync(revision, Ct);

    protected override Task<IStore> OpenWithTablesAsync(ServiceTableDeriver derive) =>
        Task.FromResult<IStore>(new EtcdStore(new EtcdStoreOptions
        {
            Endpoints = [etcd.Server.Endpoint],
            Prefix = _prefix + "-tables",
            Timeout = TimeSpan.FromSeconds(5),
            DeriveTable = derive,
            KeepsTable = service => service.Config.Scheduler == "mh", // as DeriveForTest: server writes to the others read nothing first
        }));
}
