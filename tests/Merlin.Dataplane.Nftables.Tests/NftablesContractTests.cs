using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Contract;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The dataplane contract against the kernel's nftables, in a namespace of its own (root).</summary>
public sealed class NftablesContractTests : DataplaneContractTests
{
    private TestNamespace? _ns;

    protected override Task<IDataplane> OpenAsync()
    {
        _ns = TestNamespace.WithInterface();
        var (dataplane, _) = KernelDataplane.Create(_ns, new FakeNeighbours());
        return Task.FromResult<IDataplane>(dataplane);
    }

    /// <summary>Another program's table (a firewall, say) in the same namespace.</summary>
    protected override Task<bool> AddForeignServiceAsync()
    {
        _ns!.NftScript("table inet other {\n  chain prerouting {\n    type nat hook prerouting priority -100;\n    ip daddr 198.18.0.99 tcp dport 80 dnat to 198.18.1.9:80\n  }\n}\n");
        return Task.FromResult(true);
    }

    protected override Task<bool> ForeignServiceExistsAsync() =>
        Task.FromResult(_ns!.Nft("list", "table", "inet", "other").Contains("198.18.1.9", StringComparison.Ordinal));

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        _ns?.Dispose();
    }
}
