using Merlin.Dataplane.Nftables;
using Merlin.Dataplane.Abstractions;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

public static class NftablesServiceCollectionExtensions
{
    /// <summary>The nftables dataplane as the reconciler's <see cref="IDataplane"/>; its tables are opened when it is first resolved.</summary>
    public static IServiceCollection AddNftablesDataplane(this IServiceCollection services, NftablesOptions options) =>
        services.AddSingleton<IDataplane>(sp => new NftablesDataplane(options, sp.GetRequiredService<ILogger<NftablesDataplane>>()));
}
