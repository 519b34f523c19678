using System.Runtime.InteropServices;
using Grpc.Core;
using k8s;
using Merlin.Client;
using Merlin.Hosting;
using Merlin.Kubernetes;
using Merlin.Kubernetes.Controller;
using Merlin.PrometheusExport;
using Prometheus;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

// Exit codes: 0 stopped by a signal, 1 lost the leader lease or failed (logged), 2 the command line was wrong.
var commandLine = new ControllerCommandLine();
var (parsed, exit) = await HostCommandLine.ParseAsync(commandLine.Root, "merlin-k8s", args);
if (exit is { } code) return code;
var invocation = commandLine.Bind(parsed, out var error);
Metadata? headers = null;
try
{
    if (invocation is not null) headers = GrpcConnection.Headers(invocation.Merlin);
}
catch (ConnectionSetupException e)
{
    (invocation, error) = (null, e.Message);
}
if (invocation is null)
{
    Console.Error.WriteLine($"merlin-k8s: {error}");
    return 2;
}

KubernetesClientConfiguration kubeConfig;
try
{
    kubeConfig = invocation.Kubeconfig is { } file ? KubernetesClientConfiguration.BuildConfigFromConfigFile(file)
        : KubernetesClientConfiguration.IsInCluster() ? KubernetesClientConfiguration.InClusterConfig()
        : KubernetesClientConfiguration.BuildDefaultConfig();
}
catch (Exception e)
{
    Console.Error.WriteLine($"merlin-k8s: --kubeconfig: {e.Message}");
    return 2;
}

var builder = WebApplication.CreateSlimBuilder();
builder.Logging.ClearProviders();
if (invocation.LogFormat == "json") builder.Logging.AddJsonConsole(o => o.TimestampFormat = "O");
else builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
builder.WebHost.ConfigureKestrel(k => k.Listen(invocation.Listen));
await using var app = builder.Build();
var logs = app.Services.GetRequiredService<ILoggerFactory>();

using var kubernetes = new Kubernetes(kubeConfig);
using var channel = GrpcConnection.CreateChannel(invocation.Merlin);
var timeout = invocation.Merlin.Timeout;
using var host = new ControllerHost(kubernetes, new MerlinClient(channel), () => new CallOptions(headers, DateTime.UtcNow + timeout),
    invocation.Controller, invocation.Lease, logs);

app.MapGet("/healthz", () => Results.Text("ok\n"));
app.MapGet("/readyz", () => host.Synced ? Results.Text(host.Leading ? "leader\n" : "standby\n") : Results.Text("caches not synced\n", statusCode: 503));
using var metrics = MeterExporter.Of(host.Metrics.Meter, ControllerMetrics.InstrumentLabels);
app.MapMetrics("/metrics", metrics.Registry);

using var stop = new CancellationTokenSource();
using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
try
{
    await app.StartAsync(stop.Token);
}
catch (IOException e)
{
    Console.Error.WriteLine($"merlin-k8s: --listen: cannot listen on {invocation.Listen}: {e.Message}");
    return 2;
}
await host.RunAsync(stop.Token);
await app.StopAsync(CancellationToken.None);
return stop.IsCancellationRequested ? 0 : 1;
