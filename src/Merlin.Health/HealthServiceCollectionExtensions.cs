using Merlin.Health;
using Merlin.Reconciler;

namespace Microsoft.Extensions.DependencyInjection;

public static class HealthServiceCollectionExtensions
{
    /// <summary>
    /// The health checks of real servers: the probes (run from <paramref name="networkNamespace"/>, where the servers are
    /// reachable; null: this process's own) and the checker, which is also the reconciler's <see cref="IServerHealth"/>.
    /// </summary>
    /// <param name="keepAlive">Plain HTTP checks keep one connection per server; false: a new connection per check.</param>
    public static IServiceCollection AddMerlinHealth(this IServiceCollection services, string? networkNamespace, bool keepAlive)
    {
        services.AddSingleton(_ => new HealthProbes(networkNamespace, keepAlive));
        services.AddSingleton<IHealthProbe>(sp => sp.GetRequiredService<HealthProbes>());
        services.AddSingleton<HealthChecker>();
        services.AddSingleton<IServerHealth>(sp => sp.GetRequiredService<HealthChecker>());
        return services;
    }
}
