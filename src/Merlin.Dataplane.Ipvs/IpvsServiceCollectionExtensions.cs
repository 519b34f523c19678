using Merlin.Dataplane.Ipvs;
using Merlin.Dataplane.Abstractions;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

public static class IpvsServiceCollectionExtensions
{
    /// <summary>
    /// The IPVS dataplane as the reconciler's <see cref="IDataplane"/>. It opens its netlink socket when first resolved,
    /// and throws <see cref="Merlin.Linux.NetlinkException"/> there on a kernel without IPVS.
    /// </summary>
    public static IServiceCollection AddIpvsDataplane(this IServiceCollection services, IpvsDataplaneOptions options) =>
        services.AddSingleton<IDataplane>(sp => new IpvsDataplane(options, sp.GetRequiredService<ILogger<IpvsDataplane>>()));
}
