using System.Diagnostics.Metrics;
using System.Reflection;
using Google.Protobuf.WellKnownTypes;
using Merlin.Api;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Store.Etcd;
using Merlin.Store.Sqlite;
using Merlin.Wire;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Prometheus;

namespace Merlin.Daemon;

/// <summary>Builds the daemon: one process, one store, one reconciler, one dataplane, the API on one port and health on another.</summary>
public static class DaemonHost
{
    public static readonly string Version =
        typeof(DaemonHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "dev";

    public static WebApplication Build(DaemonOptions options, Action<IServiceCollection>? overrides = null)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Configuration.Sources.Clear();
        builder.Logging.ClearProviders();
        if (options.LogFormat == "json") builder.Logging.AddJsonConsole(o => o.TimestampFormat = "O");
        else builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
        builder.Logging.SetMinimumLevel(System.Enum.Parse<LogLevel>(options.LogLevel, ignoreCase: true));
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Grpc", LogLevel.Warning);

        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(options.ListenAddress, options.Port, l => l.Protocols = HttpProtocols.Http2);
            k.Listen(options.HealthListenAddress, options.HealthPort, l => l.Protocols = HttpProtocols.Http1);
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(10));

        var services = builder.Services;
        services.AddSingleton(options);
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<IStore>(sp => CreateStore(options));
        services.AddSingleton<IDataplane>(sp => CreateDataplane(options, sp.GetRequiredService<ILoggerFactory>()));
        services.AddSingleton(sp => new ReconcilerStatus(sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton(new ReconcilerOptions { SyncPeriod = options.SyncPeriod });
        services.AddSingleton<Reconciler.Reconciler>();
        services.AddSingleton<ReconcileLoop>();
        services.AddHostedService(sp => sp.GetRequiredService<ReconcileLoop>());
        services.AddSingleton<IStatusReporter, DaemonStatus>();
        services.AddGrpc(o => o.EnableDetailedErrors = false);
        overrides?.Invoke(services);

        var app = builder.Build();
        var grpcHost = $"*:{options.Port}";
        var healthHost = $"*:{options.HealthPort}";
        app.MapGrpcService<MerlinService>().RequireHost(grpcHost);
        app.MapGet("/healthz", () => Results.Text("ok\n")).RequireHost(healthHost);
        app.MapGet("/readyz", (ReconcilerStatus status) =>
        {
            var s = status.Current;
            var ready = s.Ready && s.StoreReachable;
            var text = ready ? "ready\n" : $"not ready: {(s.StoreReachable ? "first reconcile pending" : "store unreachable")}{(s.LastError is null ? "" : $" ({s.LastError})")}\n";
            return Results.Text(text, statusCode: ready ? 200 : 503);
        }).RequireHost(healthHost);
        app.MapGet("/status", (IStatusReporter reporter) =>
            Results.Text(Google.Protobuf.JsonFormatter.Default.Format(reporter.Report()) + "\n", "application/json")).RequireHost(healthHost);
        app.MapMetrics("/metrics").RequireHost(healthHost);
        DaemonMetrics.Register(app.Services);

        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Merlin.Daemon");
            log.LogInformation(
                "merlin {Version} listening: API {ApiAddress}:{ApiPort}, health {HealthAddress}:{HealthPort}; store {Backend} {Where}; dataplane {Dataplane}",
                Version, options.ListenAddress, options.Port, options.HealthListenAddress, options.HealthPort, options.StoreBackend,
                options.StoreBackend == "sqlite" ? options.StorePath : string.Join(",", options.StoreEndpoints), options.Dataplane);
        });
        app.Lifetime.ApplicationStopping.Register(() =>
            app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Merlin.Daemon")
                .LogInformation("Shutting down; the dataplane is left programmed so traffic keeps flowing"));
        return app;
    }

    public static IStore CreateStore(DaemonOptions options)
    {
        if (options.StoreBackend == "sqlite")
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(options.StorePath));
            if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
            return new SqliteStore(options.StorePath);
        }
        return new EtcdStore(new EtcdStoreOptions { Endpoints = options.StoreEndpoints, Prefix = options.StorePrefix, Timeout = options.StoreTimeout });
    }

    public static IDataplane CreateDataplane(DaemonOptions options, ILoggerFactory logs) => options.Dataplane switch
    {
        "none" => new InMemoryDataplane(),
        "nftables" => new Merlin.Dataplane.Nftables.NftablesDataplane(
            new Merlin.Dataplane.Nftables.NftablesOptions { HashSeed = options.HashSeed!.Value, Interface = options.Interface },
            logs.CreateLogger<Merlin.Dataplane.Nftables.NftablesDataplane>()),
        _ => throw new OptionsException($"--dataplane: \"{options.Dataplane}\" is not available in this build (one of {string.Join(", ", DaemonOptions.Dataplanes)})"),
    };
}

/// <summary>Answers the Status RPC and /status from the reconciler's view.</summary>
internal sealed class DaemonStatus(ReconcilerStatus status, DaemonOptions options, IStore store, IDataplane dataplane, TimeProvider time) : IStatusReporter
{
    public StatusResponse Report()
    {
        var s = status.Current;
        var response = new StatusResponse
        {
            Version = DaemonHost.Version,
            StoreBackend = store.Backend,
            StoreReachable = s.StoreReachable,
            Dataplane = dataplane.Name,
            ReconcilePasses = (ulong)s.Passes,
            ReconcileErrors = (ulong)s.Errors,
            OperationsApplied = (ulong)s.OperationsApplied,
            LastError = s.LastError ?? "",
            Services = (uint)s.Services,
            Servers = (uint)s.Servers,
            Ready = s.Ready && s.StoreReachable,
        };
        if (s.LastPass is { } last) response.SinceLastReconcile = Duration.FromTimeSpan(time.GetUtcNow() - last);
        _ = options;
        return response;
    }
}

/// <summary>Gauges that describe the node as a whole; counters and histograms come from the reconciler's Meter.</summary>
internal static class DaemonMetrics
{
    public static void Register(IServiceProvider services)
    {
        var status = services.GetRequiredService<ReconcilerStatus>();
        var meter = new Meter("merlin");
        meter.CreateObservableGauge("store_up", () => status.Current.StoreReachable ? 1 : 0, description: "1 when the last read of the store succeeded");
        meter.CreateObservableGauge("ready", () => status.Current.Ready && status.Current.StoreReachable ? 1 : 0, description: "1 when the dataplane has been programmed from a reachable store");
        meter.CreateObservableGauge("services", () => status.Current.Services, description: "Virtual services in the desired state");
        meter.CreateObservableGauge("servers", () => status.Current.Servers, description: "Real servers in the desired state");
    }
}
