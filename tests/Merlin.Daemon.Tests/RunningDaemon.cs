using System.Net;
using System.Net.Sockets;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>The real daemon (Kestrel, gRPC, store, reconciler) on free loopback ports, in this process.</summary>
public sealed class RunningDaemon : IAsyncDisposable
{
    private WebApplication? _app;
    private GrpcChannel? _channel;

    /// <summary>The daemon's own --state-dir (unless a test gives one): a daemon takes a node lock in it.</summary>
    private readonly TempDir _state;

    /// <summary>Replacements for the daemon's own services (a dataplane that counts, say), applied at each start.</summary>
    private readonly Action<IServiceCollection>? _overrides;

    private RunningDaemon(DaemonOptions options, TempDir state, Action<IServiceCollection>? overrides)
    {
        Options = options;
        _state = state;
        _overrides = overrides;
    }

    public DaemonOptions Options { get; }

    /// <summary>Every line the daemon logged (after its own level filters), across restarts.</summary>
    public ListLoggerProvider Logs { get; } = new();

    /// <summary>The channel the clients share (h2c to the API port), for calls with hand-made bodies.</summary>
    public GrpcChannel Channel => _channel!;

    public Original.Types.Merlin.MerlinClient Original { get; private set; } = null!;

    public Wire.Merlin.MerlinClient Extended { get; private set; } = null!;

    public IServiceProvider Services => _app!.Services;

    public InMemoryDataplane Dataplane => (InMemoryDataplane)Services.GetRequiredService<IDataplane>();

    public ReconcileLoop Loop => Services.GetRequiredService<ReconcileLoop>();

    public static async Task<RunningDaemon> StartAsync(Func<DaemonOptions, DaemonOptions> configure, Action<IServiceCollection>? overrides = null)
    {
        // A port found free can be taken by another test process (etcd, a lab) before Kestrel binds
        // it: pick new ports and try again.
        for (var attempt = 1; ; attempt++)
        {
            var state = new TempDir("state");
            var options = configure(new DaemonOptions { Port = LocalPorts.Free(), HealthPort = LocalPorts.Free(), SyncPeriod = TimeSpan.FromSeconds(30), StateDir = state.Path });
            var daemon = new RunningDaemon(options, state, overrides);
            try
            {
                await daemon.StartAsync();
                return daemon;
            }
            catch (IOException e) when (attempt < 5 && e.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException)
            {
                await daemon.DisposeAsync();
            }
        }
    }

    public async Task StartAsync()
    {
        _app = DaemonHost.Build(Options, services =>
        {
            services.AddSingleton<Microsoft.Extensions.Logging.ILoggerProvider>(Logs);
            _overrides?.Invoke(services);
        });
        await _app.StartAsync(TestContext.Current.CancellationToken);
        _channel = GrpcChannel.ForAddress($"http://127.0.0.1:{Options.Port}");
        Original = new Original.Types.Merlin.MerlinClient(_channel);
        Extended = new Wire.Merlin.MerlinClient(_channel);
    }

    public async Task StopAsync()
    {
        _channel?.Dispose();
        _channel = null;
        if (_app is not null)
        {
            await _app.StopAsync(CancellationToken.None);
            await _app.DisposeAsync();
            _app = null;
        }
    }

    public async Task RestartAsync()
    {
        await StopAsync();
        await StartAsync();
    }

    /// <summary>Runs meradm in this process against this daemon's API, as an operator would; returns exit code, stdout, stderr.</summary>
    public async Task<(int Code, string Out, string Err)> MeradmAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = await Merlin.Cli.MeradmApp.RunAsync([.. args, "-H", "127.0.0.1", "-P", Options.Port.ToString()], stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    public HttpClient Health() => new() { BaseAddress = new Uri($"http://127.0.0.1:{Options.HealthPort}") };

    /// <summary>Waits until the reconciler has programmed what the store holds.</summary>
    public async Task WaitForDataplaneAsync(Func<DataplaneState, bool> condition)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        try
        {
            while (!condition(Dataplane.State)) await Task.Delay(20, cts.Token);
        }
        catch (OperationCanceledException) when (!TestContext.Current.CancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"the dataplane did not reach the expected state within 30 s; the daemon's log:\n{Logs.Text}");
        }
    }

    /// <summary>Waits until this run of the daemon has made <paramref name="count"/> reconcile passes.</summary>
    public async Task WaitForPassesAsync(int count)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        while (Loop.Passes < count) await Task.Delay(50, cts.Token);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _state.Dispose();
    }

}

/// <summary>One etcd for a test class; each test uses its own key prefix.</summary>
public sealed class EtcdFixture : IDisposable
{
    private EtcdServer? _etcd;

    public EtcdServer Server
    {
        get
        {
            Requires.Etcd();
            return _etcd ??= EtcdServer.Launch();
        }
    }

    public void Dispose() => _etcd?.Dispose();
}
