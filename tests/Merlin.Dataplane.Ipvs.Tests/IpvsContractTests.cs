using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Contract;
using Merlin.Ipvs;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Dataplane.Ipvs.Tests;

/// <summary>
/// The dataplane contract against a real IPVS: in the qemu guest (tests/vm/ipvs-guest), in a namespace of its
/// own; the service that is not ours is made by a second client, as kube-proxy would.
/// </summary>
[Trait("Kernel", "ipvs")]
public sealed class IpvsContractTests : DataplaneContractTests
{
    private static readonly ServiceKey Foreign = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.99"), 8080, Protocol.Tcp);

    private ScratchNamespace? _ns;
    private readonly TempDir _state = new("ipvs-contract");

    protected override Task<IDataplane> OpenAsync()
    {
        Requires.Ipvs();
        Requires.Root();
        _ns = new ScratchNamespace("ipvsct");
        return Task.FromResult<IDataplane>(new IpvsDataplane(new IpvsDataplaneOptions
        {
            NetworkNamespace = _ns.Name,
            OwnershipFile = _state.File("ipvs-owned-services"),
        }, NullLogger<IpvsDataplane>.Instance));
    }

    protected override Task<bool> AddForeignServiceAsync()
    {
        using var other = IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = _ns!.Name });
        other.NewService(Foreign, new ServiceConfig { Scheduler = "rr" });
        return Task.FromResult(true);
    }

    protected override Task<bool> ForeignServiceExistsAsync()
    {
        using var other = IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = _ns!.Name });
        return Task.FromResult(other.GetServices(Ct).Any(s => s.Key == Foreign));
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        _ns?.Dispose();
        _state.Dispose();
    }
}
