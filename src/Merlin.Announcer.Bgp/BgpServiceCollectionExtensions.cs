using Merlin.Announcer;
using Merlin.Announcer.Bgp;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

public static class BgpServiceCollectionExtensions
{
    /// <summary>gobgpd announces the VIPs to the routers of an ECMP fleet.</summary>
    public static IServiceCollection AddBgpAnnouncer(this IServiceCollection services, BgpOptions options) =>
        services.AddSingleton<IAnnouncer>(sp => new GobgpAnnouncer(options, sp.GetRequiredService<ILoggerFactory>(), sp.GetRequiredService<TimeProvider>()));
}
