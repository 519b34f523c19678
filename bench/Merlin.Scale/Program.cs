using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Reconciler;
using Merlin.Testing;
using Merlin.Wire;
using Microsoft.Extensions.DependencyInjection;

// Scale harness: a real daemon (in this process, loopback gRPC over HTTP/2) on each store backend.
// Usage: dotnet run -c Release --project bench/Merlin.Scale -- [--store sqlite|etcd3|both] [--services 10000]
//        [--servers 10] [--concurrency 32] [--list-runs 10]
var opts = Args.Parse(args);
var results = new List<string>();
foreach (var backend in opts.Store == "both" ? ["sqlite", "etcd3"] : new[] { opts.Store })
{
    results.AddRange(await Run(backend, opts));
}
Console.WriteLine();
Console.WriteLine($"| store | measure | value |");
Console.WriteLine($"|---|---|---|");
foreach (var line in results) Console.WriteLine(line);
return 0;

static async Task<List<string>> Run(string backend, Args o)
{
    using var dir = new TempDir("scale");
    EtcdServer? etcd = null;
    var rows = new List<string>();
    try
    {
        var options = new DaemonOptions
        {
            Port = FreePort(), HealthPort = FreePort(), StoreBackend = backend, StorePath = dir.File("merlin.db"),
            SyncPeriod = TimeSpan.FromHours(1), LogFormat = "text",
        };
        if (backend == "etcd3")
        {
            etcd = EtcdServer.Launch();
            options = options with { StoreEndpoints = [etcd.Endpoint], StoreTimeout = TimeSpan.FromSeconds(30) };
        }
        await using var app = DaemonHost.Build(options with { LogLevel = "warning" });
        await app.StartAsync();
        using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{options.Port}",
            new GrpcChannelOptions { MaxReceiveMessageSize = Merlin.Client.GrpcConnection.MaxMessageBytes });
        var client = new Merlin.Wire.Merlin.MerlinClient(channel);
        Console.WriteLine($"[{backend}] daemon up; creating {o.Services:N0} services × {o.Servers} servers with {o.Concurrency} concurrent calls");

        var sw = Stopwatch.StartNew();
        await Parallel(o.Services, o.Concurrency, async i => await client.CreateServiceAsync(Service(i)), $"[{backend}] services");
        var svcRate = o.Services / sw.Elapsed.TotalSeconds;
        rows.Add($"| {backend} | CreateService, {o.Concurrency} concurrent | {svcRate:N0}/s |");

        sw.Restart();
        var total = o.Services * o.Servers;
        await Parallel(total, o.Concurrency, async i => await client.CreateServerAsync(Server(i / o.Servers, i % o.Servers)), $"[{backend}] servers");
        var rate = total / sw.Elapsed.TotalSeconds;
        Console.WriteLine($"[{backend}] CreateServer: {total:N0} calls in {sw.Elapsed.TotalSeconds:N1} s = {rate:N0}/s");
        rows.Add($"| {backend} | CreateServer, {o.Concurrency} concurrent | {rate:N0}/s ({total:N0} calls in {sw.Elapsed.TotalSeconds:N1} s) |");

        var latencies = new List<double>();
        var size = 0;
        for (var r = 0; r < o.ListRuns + 1; r++)
        {
            sw.Restart();
            var list = await client.ListAsync(new Empty());
            var ms = sw.Elapsed.TotalMilliseconds;
            if (r == 0) { size = list.CalculateSize(); continue; } // first call warms up
            latencies.Add(ms);
            if (list.Items.Count != o.Services) throw new InvalidOperationException($"List returned {list.Items.Count} services");
        }
        latencies.Sort();
        Console.WriteLine($"[{backend}] List ({size / 1024.0 / 1024.0:N1} MiB): p50 {P(latencies, 0.5):N0} ms, max {latencies[^1]:N0} ms");
        rows.Add($"| {backend} | List of {o.Services:N0} × {o.Servers} ({size / 1024.0 / 1024.0:N1} MiB), {o.ListRuns} runs | p50 {P(latencies, 0.5):N0} ms, max {latencies[^1]:N0} ms |");

        // The reconciler has been following the watch; make sure it has converged, then time no-change passes.
        var reconciler = app.Services.GetRequiredService<Reconciler>();
        var dataplane = (InMemoryDataplane)app.Services.GetRequiredService<IDataplane>();
        await reconciler.RunPassAsync(CancellationToken.None);
        if (dataplane.State.ServerCount != total) throw new InvalidOperationException($"dataplane has {dataplane.State.ServerCount} servers, expected {total}");
        var passes = new List<double>();
        for (var r = 0; r < 5; r++)
        {
            var pass = await reconciler.RunPassAsync(CancellationToken.None);
            if (pass.Planned != 0) throw new InvalidOperationException($"steady-state pass planned {pass.Planned} operations");
            passes.Add(pass.Duration.TotalMilliseconds);
        }
        passes.Sort();
        Console.WriteLine($"[{backend}] no-change reconcile pass (store read + plan, in-memory dataplane): p50 {P(passes, 0.5):N0} ms");
        rows.Add($"| {backend} | no-change reconcile pass (List + desired state + plan), 0 operations | p50 {P(passes, 0.5):N0} ms |");
        await app.StopAsync();
    }
    finally
    {
        etcd?.Dispose();
    }
    return rows;
}

static VirtualService Service(int i) => new()
{
    Id = $"svc-{i}",
    Key = new VirtualService.Types.Key { Ip = $"198.18.{i / 250}.{i % 250 + 1}", Port = 80, Protocol = Protocol.Tcp },
    Config = new VirtualService.Types.Config { Scheduler = "mh", Flags = { "mh-port" } },
};

static RealServer Server(int service, int j) => new()
{
    ServiceID = $"svc-{service}",
    Key = new RealServer.Types.Key { Ip = $"198.19.{j}.{service % 250 + 1}", Port = (uint)(8080 + service / 250) },
    Config = new RealServer.Types.Config { Weight = 1, Forward = ForwardMethod.Route },
};

static async Task Parallel(int count, int concurrency, Func<int, Task> call, string label)
{
    var next = -1;
    var done = 0;
    var step = Math.Max(1, count / 10);
    var workers = Enumerable.Range(0, concurrency).Select(async _ =>
    {
        int i;
        while ((i = Interlocked.Increment(ref next)) < count)
        {
            await call(i);
            var d = Interlocked.Increment(ref done);
            if (d % step == 0) Console.WriteLine($"{label}: {d:N0}/{count:N0}");
        }
    });
    await Task.WhenAll(workers);
}

static double P(List<double> sorted, double q) => sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];

static int FreePort()
{
    using var l = new TcpListener(IPAddress.Loopback, 0);
    l.Start();
    return ((IPEndPoint)l.LocalEndpoint).Port;
}

sealed record Args(string Store, int Services, int Servers, int Concurrency, int ListRuns)
{
    public static Args Parse(string[] a)
    {
        string Get(string name, string fallback) => Array.IndexOf(a, name) is var i && i >= 0 && i + 1 < a.Length ? a[i + 1] : fallback;
        var store = Get("--store", "both");
        if (store is not ("sqlite" or "etcd3" or "both")) throw new ArgumentException("--store: sqlite, etcd3 or both");
        return new Args(store, int.Parse(Get("--services", "10000")), int.Parse(Get("--servers", "10")),
            int.Parse(Get("--concurrency", "32")), int.Parse(Get("--list-runs", "10")));
    }
}
