using Merlin.Announcer;
using Merlin.Announcer.Vrrp;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

public static class AnnouncerServiceCollectionExtensions
{
    /// <summary>The operator places the VIPs; Merlin announces nothing.</summary>
    public static IServiceCollection AddStaticAnnouncer(this IServiceCollection services) =>
        services.AddSingleton<IAnnouncer, StaticAnnouncer>();

    /// <summary>A keepalived instance holds the VIPs of a VRRP pair.</summary>
    public static IServiceCollection AddVrrpAnnouncer(this IServiceCollection services, VrrpOptions options) =>
        services.AddSingleton<IAnnouncer>(sp => new KeepalivedAnnouncer(options, sp.GetRequiredService<ILoggerFactory>(), sp.GetRequiredService<TimeProvider>()));
}
