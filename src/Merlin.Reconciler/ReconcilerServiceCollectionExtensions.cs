using Merlin.Reconciler;

namespace Microsoft.Extensions.DependencyInjection;

public static class ReconcilerServiceCollectionExtensions
{
    /// <summary>
    /// The reconciler and its loop (a hosted service the host starts when it chooses), with the status they report.
    /// The store, the dataplane and <see cref="IServerHealth"/> are registered by their own projects.
    /// </summary>
    public static IServiceCollection AddMerlinReconciler(this IServiceCollection services, ReconcilerOptions options)
    {
        services.AddSingleton(sp => new ReconcilerStatus(sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton(options);
        services.AddSingleton<ReconcilePass>();
        services.AddSingleton<ReconcileLoop>();
        return services;
    }
}
