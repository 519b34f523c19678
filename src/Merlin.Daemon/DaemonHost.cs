using System.Reflection;
using Merlin.Api;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Store.Etcd;
using Merlin.Store.Sqlite;
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
        // The sections' rules first (the command line ran them too; a host built from a DaemonOptions directly has not):
        // a bad setting stops here naming its flag, before the lock, the certificate files, the store or the dataplane.
        DaemonSections.Check(options);
        // Then: a second daemon on this node and state directory stops here, having touched nothing.
        var nodeLock = NodeLock.Take(options.StateDir);
        try
        {
            var app = Build(options, nodeLock, overrides);
            app.Services.GetRequiredService<NodeLock>(); // held until the host is disposed
            return app;
        }
        catch
        {
            nodeLock.Dispose();
            throw;
        }
    }

    private static WebApplication Build(DaemonOptions options, NodeLock nodeLock, Action<IServiceCollection>? overrides)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Configuration.Sources.Clear();
        builder.Logging.ClearProviders();
        if (options.LogFormat == "json") builder.Logging.AddJsonConsole(o => o.TimestampFormat = "O");
        else builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
        builder.Logging.SetMinimumLevel(System.Enum.Parse<LogLevel>(options.LogLevel, ignoreCase: true));
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Grpc", LogLevel.Warning);
        // At debug, the etcd channel's balancer says which member each call picked and when a member's connection fails.
        if (options.LogLevel.Equals("debug", StringComparison.OrdinalIgnoreCase)) builder.Logging.AddFilter("Grpc.Net.Client.Balancer", LogLevel.Debug);

        var apiSecurity = ApiSecurity.Load(options, TimeProvider.System);
        apiSecurity.AddTo(builder); // the API's TCP listener (TLS), its Unix socket, and who may call what
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(options.HealthListenAddress, options.HealthPort, l => l.Protocols = HttpProtocols.Http1);
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(10));

        var services = builder.Services;
        services.AddSingleton(_ => nodeLock); // made by a factory, so the container disposes it (releases the lock)
        services.AddSingleton(options);
        services.AddDaemonSections(options); // IOptions<StoreSection>, <ApiSection>, …, each with its validator, ValidateOnStart
        services.AddSingleton(TimeProvider.System);
        services.AddMerlinStore(options.Store);
        services.AddMerlinDataplane(options.Dataplane, options.NetworkNamespace, options.StateDir);
        services.AddMerlinReconciler(new ReconcilerOptions { SyncPeriod = options.SyncPeriod });
        // The services that act on the kernel, the store or the network start once the host has started, i.e.
        // once the API and health ports are bound (AfterListening): a second daemon started by mistake on a node
        // fails on the ports in use without having written a thing.
        services.AddHostedService<AfterListening<ReconcileLoop>>();
        services.AddSingleton<HeapTrim>();
        services.AddHostedService(sp => sp.GetRequiredService<HeapTrim>());
        services.AddSingleton<IStatusReporter, DaemonStatus>();
        // Health checks run from the namespace the dataplane programs, where the real servers are reachable.
        services.AddMerlinHealth(options.NetworkNamespace, options.HealthKeepAlive);
        services.AddSingleton<HealthCheckService>();
        services.AddHostedService<AfterListening<HealthCheckService>>();
        // Removes drained servers at their deadline: the API's, as the store's only writer.
        services.AddSingleton<DrainExpiry>();
        services.AddHostedService<AfterListening<DrainExpiry>>();
        // Who holds the VIPs, fed the service VIPs of every pass; registered after the reconcile loop, so it
        // stops first: keepalived releases the VIPs (the peer takes over) while this node still forwards.
        services.AddMerlinAnnouncer(options.Announcer);
        services.AddSingleton(new NodeDrain(options.StateDir));
        services.AddSingleton<AnnouncerService>();
        services.AddHostedService<AfterListening<AnnouncerService>>();
        services.AddGrpc(o => o.EnableDetailedErrors = false);
        services.AddMerlinApi();
        overrides?.Invoke(services);

        var app = builder.Build();
        // Open the store now (SQLite: the file is checked before anything is written to it), so a bad file is a
        // clear start-up error naming the flag rather than a failing host.
        OpenStore(app.Services, options);
        // Open the dataplane now, so a kernel without it is a clear start-up error rather than a failing host.
        var dataplane = OpenDataplane(app.Services);
        var healthHost = $"*:{options.HealthPort}";
        // No host filter: gRPC needs HTTP/2, which only the API's listeners speak (TCP and the Unix socket,
        // whose clients send no port); the health listener is HTTP/1.
        app.MapMerlinApi(); // callers admitted before any body is read; a malformed body is INVALID_ARGUMENT
        app.MapGet("/healthz", () => Results.Text("ok\n")).RequireHost(healthHost);
        app.MapGet("/readyz", (ReconcilerStatus status, Merlin.Announcer.IAnnouncer announcer, NodeDrain drain) =>
        {
            var s = status.Current;
            var a = announcer.State;
            var role = a.RoleName.Length > 0 ? $" ({a.Mode} {a.RoleName})" : "";
            var ready = s.Ready && s.StoreReachable && a.Healthy && !drain.Drained;
            if (ready) return Results.Text($"ready{role}\n");
            // Every reason, not the first: a node cut off from its network is both store-unreachable and FAULT,
            // and which of the two it notices first is a race an operator should not have to know about.
            var reasons = new List<string>(3);
            if (!(s.Ready && s.StoreReachable))
                reasons.Add($"{(s.StoreReachable ? "first reconcile pending" : "store unreachable")}{(s.LastError is null ? "" : $" ({s.LastError})")}");
            if (drain.Drained) reasons.Add("the node is drained (meradm node undrain)");
            if (!a.Healthy) reasons.Add($"announcer {a.Mode} {a.RoleName}: {a.Detail}");
            return Results.Text($"not ready: {string.Join("; ", reasons)}\n", statusCode: 503);
        }).RequireHost(healthHost);
        app.MapGet("/status", (IStatusReporter reporter) =>
            Results.Text(Google.Protobuf.JsonFormatter.Default.Format(StatusWireMapper.ToWire(reporter.Report())) + "\n", "application/json")).RequireHost(healthHost);
        StatusPage.Map(app, healthHost); // the page (/) and its JSON (/status/detail)
        app.MapMetrics("/metrics").RequireHost(healthHost);
        DaemonMetrics.Register(app.Services);

        app.Lifetime.ApplicationStarted.Register(() => apiSecurity.OnStarted(app.Services));
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Merlin.Daemon");
            log.LogInformation(
                "merlin {Version} listening: API {ApiAddress}:{ApiPort}, health {HealthAddress}:{HealthPort}; store {Backend} {Where}; dataplane {Dataplane}",
                Version, options.ListenAddress, options.Port, options.HealthListenAddress, options.HealthPort, options.StoreBackend,
                options.StoreBackend == "sqlite" ? options.StorePath : string.Join(",", options.StoreEndpoints), dataplane.Name);
        });
        app.Lifetime.ApplicationStopping.Register(() =>
            app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Merlin.Daemon")
                .LogInformation("Shutting down; the dataplane is left programmed so traffic keeps flowing"));
        return app;
    }

    /// <summary>
    /// A listener Kestrel could not bind, as one line naming its flag (<c>--port: 127.0.0.1:4282 is in use …</c>);
    /// null when <paramref name="e"/> is not a bind failure.
    /// </summary>
    public static string? DescribeBindFailure(DaemonOptions options, IOException e)
    {
        if (!e.Message.StartsWith("Failed to bind to address", StringComparison.Ordinal)) return null;
        var inUse = e.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException;
        var why = inUse ? "is in use by another process (another merlin on this node?)" : $"cannot be listened on ({e.InnerException?.Message ?? e.Message})";
        if (options.UnixSocket is { } socket && e.Message.Contains(socket, StringComparison.Ordinal))
            return $"--unix-socket: {socket} {why}";
        var (flag, address, port) = e.Message.Contains($":{options.HealthPort}:", StringComparison.Ordinal) && options.HealthPort != options.Port
            ? ("--health-port", options.HealthListenAddress, options.HealthPort)
            : ("--port", options.ListenAddress, options.Port);
        return $"{flag}: {Merlin.Model.Endpoints.Format(address, (ushort)port)} {why}; nothing was done to the dataplane or the store";
    }

    private static void OpenStore(IServiceProvider services, DaemonOptions options)
    {
        try
        {
            services.GetRequiredService<IStore>();
        }
        catch (StoreUnavailableException e) when (options.StoreBackend == "sqlite")
        {
            var reason = e.InnerException is Microsoft.Data.Sqlite.SqliteException sqlite ? sqlite.Message : e.Message.Replace($"sqlite store {Path.GetFullPath(options.StorePath)}: ", "");
            throw new OptionsException($"--store-path: {options.StorePath} is not a usable merlin store ({reason}); it was not changed: " +
                                       "restore it from a backup, or move it away to start with an empty store");
        }
    }

    private static IDataplane OpenDataplane(IServiceProvider services)
    {
        try
        {
            return services.GetRequiredService<IDataplane>();
        }
        catch (Merlin.Linux.NetlinkException e)
        {
            throw new OptionsException($"--dataplane: ipvs is not usable on this kernel ({e.Message}); load it with `modprobe ip_vs`, or use --dataplane nftables");
        }
    }
}

/// <summary>
/// Starts a hosted service once the host has started — every hosted service's start done and the API and health
/// ports bound — instead of with the others, which run before Kestrel binds. If binding fails the host never
/// starts, and neither does the service. Stopped in the host's order (reverse registration), only if started.
/// Generic so that each is its own hosted service: AddHostedService keeps one registration per type.
/// </summary>
internal sealed class AfterListening<T>(T inner, IHostApplicationLifetime lifetime, ILogger<T> log) : IHostedService
    where T : class, IHostedService
{
    private readonly Lock _lock = new();
    private Task? _started;
    private bool _stopping;

    public Task StartAsync(CancellationToken ct)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            lock (_lock)
            {
                if (_stopping) return;
                _started = StartInner();
            }
        });
        return Task.CompletedTask;
    }

    private async Task StartInner()
    {
        try
        {
            await inner.StartAsync(lifetime.ApplicationStopping);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            log.LogCritical(e, "{Service} failed to start; stopping the daemon", typeof(T).Name);
            Environment.ExitCode = 1;
            lifetime.StopApplication();
            throw;
        }
    }

    public async Task StopAsync(CancellationToken ct)
    {
        Task? started;
        lock (_lock)
        {
            _stopping = true;
            started = _started;
        }
        if (started is null) return;
        try { await started; }
        catch (Exception) { return; } // it never ran; logged above
        await inner.StopAsync(ct);
    }
}

/// <summary>Starts the health checks with the daemon; a verdict change triggers a reconcile pass at once.</summary>
internal sealed class HealthCheckService(Merlin.Health.HealthChecker checker, ReconcileLoop loop) : IHostedService
{
    public Task StartAsync(CancellationToken ct)
    {
        checker.Changed += loop.Trigger;
        checker.Start();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken ct)
    {
        checker.Changed -= loop.Trigger;
        return checker.DisposeAsync().AsTask(); // stops the checks; the container's dispose then finds nothing to do
    }
}

/// <summary>Answers the Status RPC and /status from the reconciler's view.</summary>
internal sealed class DaemonStatus(ReconcilerStatus status, DaemonOptions options, IStore store, IDataplane dataplane, TimeProvider time, Merlin.Health.HealthChecker health,
    Merlin.Announcer.IAnnouncer announcer, NodeDrain drain, AnnouncerService feed) : IStatusReporter
{
    /// <summary>How long a node drain waits for the announcer's peers to be told before it answers anyway.</summary>
    private static readonly TimeSpan DrainSettle = TimeSpan.FromSeconds(5);

    public async Task<NodeStatus> DrainNodeAsync(bool drained, CancellationToken ct)
    {
        try
        {
            drain.Set(drained);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The state directory was checked at start; it has been replaced or made unwritable since.
            throw new NodeDrainException($"cannot record the node's drain in --state-dir {options.StateDir}: {e.Message}", e);
        }
        feed.Feed(); // the announcer is told the new set at once, not at the next pass
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(DrainSettle);
        try { await announcer.SettleAsync(wait.Token); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
        return Report();
    }

    public IReadOnlyList<ServerHealthStatus> Health() =>
        health.Report().Select(r => new ServerHealthStatus(r.Service, r.Server, r.Verdict, r.Detail, r.Since)).ToList();

    public NodeStatus Report()
    {
        var s = status.Current;
        var diagnostics = dataplane as IDataplaneDiagnostics;
        var warnings = new List<string>(diagnostics?.Warnings ?? []);
        if (feed.Withheld is { } why) warnings.Add($"no VIP is announced: {why}");
        var verdicts = health.Report();
        var a = announcer.State;
        return new NodeStatus
        {
            Version = DaemonHost.Version,
            StoreBackend = store.Backend,
            StoreReachable = s.StoreReachable,
            Dataplane = dataplane.Name,
            SinceLastReconcile = s.LastPass is { } last ? time.GetUtcNow() - last : null,
            ReconcilePasses = s.Passes,
            ReconcileErrors = s.Errors,
            OperationsApplied = s.OperationsApplied,
            LastError = s.LastError,
            Services = s.Services,
            Servers = s.Servers,
            Ready = s.Ready && s.StoreReachable,
            Origins = s.Origins is { } o ? new RecordOrigins(o.ServicesNotByMerlin, o.ServersNotByMerlin, o.OrphanedServers) : null,
            Sysctls = diagnostics?.Sysctls ?? [],
            Warnings = warnings,
            ServersUp = verdicts.Count(r => r.Verdict == HealthVerdict.Up),
            ServersDown = verdicts.Count(r => r.Verdict == HealthVerdict.Down),
            ServersUnknown = verdicts.Count(r => r.Verdict is not (HealthVerdict.Up or HealthVerdict.Down)),
            Announcer = a.Mode,
            AnnouncerState = a.RoleName,
            AnnouncerHealthy = a.Healthy,
            AnnouncerDetail = a.Detail,
            AnnouncerRestarts = a.Restarts,
            AnnouncerSince = a.Since,
            Vips = a.Vips.Select(v => new VipStatus(v.Address, v.Announced, v.Management)).ToList(),
            NodeDrained = drain.Drained,
            Tables = (dataplane as IProgrammedTables)?.Tables ?? [],
        };
    }

    public async Task<NodeCounters> CountersAsync(CancellationToken ct) =>
        new(dataplane.Name, dataplane is IDataplaneCounters counters ? await counters.ReadCountersAsync(ct) : []);
}
