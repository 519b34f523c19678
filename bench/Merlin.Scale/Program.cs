using System.Globalization;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.Extensions.DependencyInjection;
using static Harness;

// Scale harness: a real daemon (in this process, loopback gRPC over HTTP/2) on each store backend.
// Usage: dotnet run -c Release --project bench/Merlin.Scale -- [--store sqlite|etcd3|both] [--services 10000]
//        [--servers 10] [--concurrency 32] [--list-runs 10] [--fill api|store] [--creates 1000] [--changes 5]
// --fill api (the default) creates everything through the API and times it. --fill store writes the records
// straight into the store before the daemon starts (fast at any size), then times what happens at that size:
// a reconcile pass that applies one change, CreateService of --creates more, and on etcd the raw etcd
// transaction rate with the same value sizes.
// --list-only (implies --fill store): only the streamed list's row, first part and whole, after the first pass.
// --only creates (with --fill store): only the creates at that size, and on etcd what limits them (MeasureCreates).
// --daemons N [--etcd-members 3] [--nft-daemons 2]: instead, N daemons on one etcd cluster and the time a weight
// change takes to reach all of them (Fleet.cs); --services and --servers size the store (keep them small: every
// daemon holds it all). --nft-daemons adds daemons with the nftables dataplane, each in a scratch namespace (root).
// --table: issue 18's goals table in one run: --fill store on both stores at --services × --servers (with the
// streamed list, CreateServer next to raw etcd and the RSS of a separate merlin process), then the fleet with
// --daemons (default 20) + --nft-daemons (default 2) at --fleet-services × --servers (default 100 × 10), then (as
// root) --packet-rounds (default 4) rounds of Merlin.PacketPath's Merlin / minimal-rule ratio at 1 and 1,000 services.
// --rss: the table's RSS row alone (--fill store, the in-process daemon's first pass, then a separate merlin);
// --daemon-env default|NAME=VALUE[,NAME=VALUE…] (repeatable): one separate merlin each, with those variables set for
// it alone (e.g. DOTNET_gcServer=1), one after another on the same store; --daemon-hold SECONDS keeps each one
// that long after its RSS is read, to look at it (dotnet-gcdump).
var opts = Args.Parse(args);
var results = new List<string>();
if (opts.RssOnly)
{
    foreach (var backend in opts.Store == "both" ? ["sqlite", "etcd3"] : new[] { opts.Store }) results.AddRange(await Run(backend, opts with { Fill = "store" }));
}
else if (opts.Table)
{
    foreach (var backend in opts.Store == "both" ? ["sqlite", "etcd3"] : new[] { opts.Store }) results.AddRange(await Run(backend, opts with { Fill = "store" }));
    results.AddRange(await Fleet.Run(opts with { Daemons = opts.Daemons > 0 ? opts.Daemons : 20, Services = opts.FleetServices, Changes = opts.FleetChanges, Concurrency = 8 }));
    results.Add(await PacketPathRow(opts.PacketRounds));
}
else if (opts.Daemons > 0) results.AddRange(await Fleet.Run(opts));
else
    foreach (var backend in opts.Store == "both" ? ["sqlite", "etcd3"] : new[] { opts.Store })
    {
        results.AddRange(await Run(backend, opts));
    }
Console.WriteLine();
Console.WriteLine($"| store | measure | value |");
Console.WriteLine($"|---|---|---|");
foreach (var line in results) Console.WriteLine(line);
return 0;

// The packet path's row (Merlin.PacketPath's lab, UDP at its default rate, rounds of 2 s): Merlin / the minimal rule,
// LB CPU per packet, at 1 and 1,000 services. It needs root (namespaces, kernel threads' CPU time).
static async Task<string> PacketPathRow(int rounds)
{
    const string what = "packet path: LB CPU per packet / minimal netdev rule (Merlin.PacketPath, UDP), 1 service / 1,000 × 10";
    if (rounds == 0) return $"| nftables | {what} | not measured (--packet-rounds 0) |";
    if (!Environment.IsPrivilegedProcess) return $"| nftables | {what} | not measured (needs root) |";
    Console.WriteLine($"[packet path] {rounds} round(s) of 2 s at 1 service, then at 1,000");
    var (one, many) = await Merlin.PacketPath.PacketPathHarness.RatiosAsync(
        new Merlin.PacketPath.PacketPathOptions { Duration = TimeSpan.FromSeconds(2) }, rounds, line => Console.WriteLine($"[packet path] {line}"));
    static string Spread(IReadOnlyList<double> v)
    {
        var o = v.Order().ToList();
        var median = o.Count % 2 == 1 ? o[o.Count / 2] : (o[o.Count / 2 - 1] + o[o.Count / 2]) / 2;
        return string.Create(CultureInfo.InvariantCulture, $"{median:0.00} ({o[0]:0.00}–{o[^1]:0.00})");
    }
    return $"| nftables | {what}, median (min–max) of {rounds} rounds | {Spread(one)} / {Spread(many)} |";
}

static async Task<List<string>> Run(string backend, Args o)
{
    using var dir = new TempDir("scale");
    EtcdServer? etcd = null;
    var rows = new List<string>();
    try
    {
        var options = new DaemonOptions
        {
            Port = FreePort(), HealthPort = FreePort(), StoreBackend = backend, StorePath = dir.File("merlin.db"), StateDir = dir.Path,
            SyncPeriod = TimeSpan.FromHours(1), LogFormat = "text",
        };
        if (backend == "etcd3")
        {
            etcd = EtcdServer.Launch();
            options = options with { StoreEndpoints = [etcd.Endpoint], StoreTimeout = TimeSpan.FromSeconds(30) };
        }
        if (o.Fill == "store")
        {
            var sw0 = Stopwatch.StartNew();
            await FillStore(backend, options, etcd, o);
            Console.WriteLine($"[{backend}] store filled directly with {o.Services:N0} × {o.Servers} in {sw0.Elapsed.TotalSeconds:N1} s");
        }
        await using var app = DaemonHost.Build(options with { LogLevel = "warning" });
        await app.StartAsync();
        if (o.Fill == "store")
        {
            rows.Add(await FirstPass(backend, app, o));
            if (!o.RssOnly) rows.AddRange(await MeasureAtSize(backend, app, options, etcd, o));
            await app.StopAsync();
            await app.DisposeAsync();
            if (o.ListOnly) return rows;
            foreach (var env in o.DaemonEnv.Count == 0 ? [[]] : o.DaemonEnv)
                try
                {
                    rows.Add(await DaemonProcessRss(backend, options, o, env));
                }
                catch (Exception e) // a row that says why, not a run lost at its end
                {
                    rows.Add($"| {backend} | daemon RSS (separate merlin process) | not measured: {e.Message.ReplaceLineEndings(" ")} |");
                }
            return rows;
        }
        using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{options.Port}",
            new GrpcChannelOptions { MaxReceiveMessageSize = Merlin.Client.GrpcConnection.MaxMessageBytes });
        var client = new Merlin.Contracts.Merlin.MerlinClient(channel);
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
        var reconciler = app.Services.GetRequiredService<ReconcilePass>();
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

// Writes the records without the API: SQLite through the store (group commit), etcd with raw transactions of
// 100 puts (what a Go merlin's records look like: no index entries).
static async Task FillStore(string backend, DaemonOptions options, EtcdServer? etcd, Args o)
{
    if (backend == "sqlite")
    {
        await using var store = new Merlin.Store.Sqlite.SqliteStore(options.StorePath!);
        await Parallel(o.Services, 64, i => store.CreateServiceAsync(Merlin.Store.Protobuf.StoredRecords.Of(Service(i))), "[sqlite] fill services");
        await Parallel(o.Services * o.Servers, 64, i => store.CreateServerAsync(Merlin.Store.Protobuf.StoredRecords.Of(Server(i / o.Servers, i % o.Servers))), "[sqlite] fill servers");
        return;
    }
    using var channel = GrpcChannel.ForAddress(etcd!.Endpoint);
    var client = new dotnet_etcd.EtcdClient(channel.CreateCallInvoker());
    var puts = new List<(string Key, ByteString Value)>();
    for (var i = 0; i < o.Services; i++)
    {
        puts.Add(($"/merlin/services/svc-{i}", Service(i).ToByteString()));
        for (var j = 0; j < o.Servers; j++)
        {
            var server = Server(i, j);
            puts.Add(($"/merlin/servers/svc-{i}/{server.Key.Ip}:{server.Key.Port}", server.ToByteString()));
        }
    }
    var batches = puts.Chunk(100).ToList();
    await Parallel(batches.Count, 8, async b =>
    {
        var txn = new Etcdserverpb.TxnRequest();
        foreach (var (key, value) in batches[b])
            txn.Success.Add(new Etcdserverpb.RequestOp { RequestPut = new Etcdserverpb.PutRequest { Key = ByteString.CopyFromUtf8(key), Value = value } });
        await client.TransactionAsync(txn);
    }, "[etcd3] fill batches");
}

// The in-process daemon's first pass over the filled store, and the harness process's RSS then (daemon and client together).
static async Task<string> FirstPass(string backend, Microsoft.AspNetCore.Builder.WebApplication app, Args o)
{
    var loop = app.Services.GetRequiredService<ReconcileLoop>();
    var dataplane = (InMemoryDataplane)app.Services.GetRequiredService<IDataplane>();
    var total = o.Services * o.Servers;
    await Poll.UntilAsync(() => dataplane.State.ServerCount == total && loop.Passes >= 1, // the first pass has ended, not just applied
        $"the first pass to program {total:N0} servers", limit: TimeSpan.FromMinutes(5), interval: TimeSpan.FromMilliseconds(100));
    var rss = Environment.WorkingSet / 1048576.0;
    var gc = GC.GetGCMemoryInfo();
    Console.WriteLine($"[{backend}] first pass programmed {total:N0} servers; harness RSS {rss:N0} MiB (GC heap {gc.HeapSizeBytes / 1048576.0:N0} MiB, committed {gc.TotalCommittedBytes / 1048576.0:N0} MiB)");
    return $"| {backend} | harness process RSS (daemon + client, workstation GC) after the first pass, {o.Services:N0} × {o.Servers} | {rss:N0} MiB |";
}

// At the filled size: the pass that applies one change (the loop's own pass after a weight change through the
// API), CreateService of --creates more services, and on etcd the raw transaction rate for comparison.
static async Task<List<string>> MeasureAtSize(string backend, Microsoft.AspNetCore.Builder.WebApplication app, DaemonOptions options, EtcdServer? etcd, Args o)
{
    var rows = new List<string>();
    using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{options.Port}",
        new GrpcChannelOptions { MaxReceiveMessageSize = Merlin.Client.GrpcConnection.MaxMessageBytes });
    var client = new Merlin.Contracts.Merlin.MerlinClient(channel);
    var loop = app.Services.GetRequiredService<ReconcileLoop>();
    var total = o.Services * o.Servers;
    if (o.ListOnly) return [.. rows, await StreamedList(backend, client, o)];

    if (o.OnlyCreates) return [.. rows, .. await MeasureCreates(backend, app, client, etcd, o)];
    var passes = new List<double>();
    for (var r = -1; r < o.Changes; r++) // the first change warms up (JIT) and is not counted
    {
        var applied = new TaskCompletionSource<PassResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnPass(PassResult p) { if (p.Applied > 0) applied.TrySetResult(p); }
        loop.PassCompleted += OnPass;
        var server = Server((r + 1) * 997 % o.Services, (r + 1) % o.Servers);
        server.Config.Weight = (uint)(3 + r);
        await client.UpdateServerAsync(server);
        var pass = await applied.Task.WaitAsync(TimeSpan.FromMinutes(2));
        loop.PassCompleted -= OnPass;
        if (pass.Applied != 1) throw new InvalidOperationException($"the pass after one weight change applied {pass.Applied} operations");
        if (r >= 0) passes.Add(pass.Duration.TotalMilliseconds);
        await Task.Delay(300);
    }
    Console.WriteLine($"[{backend}] one-change reconcile passes: {string.Join(", ", passes.Select(p => $"{p:N1}"))} ms");
    rows.Add($"| {backend} | reconcile pass applying one weight change at {o.Services:N0} × {o.Servers}, mean of {o.Changes} (each: {string.Join(", ", passes.Select(p => p.ToString("N1")))}) | {passes.Average():N1} ms |");

    rows.Add(await StreamedList(backend, client, o));

    rows.AddRange(await MeasureCreates(backend, app, client, etcd, o));
    return rows;
}

// The streamed list (meradm list): the first part, and the whole, as a client reading the stream sees them.
static async Task<string> StreamedList(string backend, Merlin.Contracts.Merlin.MerlinClient client, Args o)
{
    var firsts = new List<double>();
    var wholes = new List<double>();
    for (var r = -1; r < 5; r++) // the first run warms up
    {
        var watch = Stopwatch.StartNew();
        using var call = client.ListStream(new Empty());
        double first = -1;
        var services = 0;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            if (first < 0) first = watch.Elapsed.TotalMilliseconds;
            services += call.ResponseStream.Current.Items.Count;
        }
        if (services != o.Services) throw new InvalidOperationException($"ListStream returned {services} services, expected {o.Services}");
        if (r < 0) continue;
        firsts.Add(first);
        wholes.Add(watch.Elapsed.TotalMilliseconds);
    }
    firsts.Sort();
    wholes.Sort();
    Console.WriteLine($"[{backend}] ListStream: first part p50 {P(firsts, 0.5):N0} ms, whole p50 {P(wholes, 0.5):N0} ms");
    return $"| {backend} | streamed list (ListStream) of {o.Services:N0} × {o.Servers}: first part / whole, p50 of 5 (max) | {P(firsts, 0.5):N0} ms ({firsts[^1]:N0}) / {P(wholes, 0.5):N0} ms ({wholes[^1]:N0}) |";
}

// CreateService of --creates more services and CreateServer of --creates more servers (an 11th, 12th, … endpoint of
// existing services) through the API with the daemon's reconcile loop running, as an operator's calls meet it. On
// etcd the same again with the loop stopped (is the daemon's CPU the limit?), straight on a store of its own (no
// API: is the API the limit?), and as raw create-if-absent transactions with the same value sizes (what etcd alone
// allows); each row with the etcd calls per create, from etcd's own counters (grpc_server_handled_total).
static async Task<List<string>> MeasureCreates(string backend, Microsoft.AspNetCore.Builder.WebApplication app,
    Merlin.Contracts.Merlin.MerlinClient client, EtcdServer? etcd, Args o)
{
    var rows = new List<string>();
    var total = o.Services * o.Servers;
    var next = o.Services; // the next new service's number
    var round = 0;         // the servers' endpoint round: each round adds one endpoint to --creates services
    async Task<double> Timed(string what, string label, Func<int, Task> call)
    {
        var before = etcd is null ? default : await EtcdCalls(etcd);
        var jit = System.Runtime.JitInfo.GetCompiledMethodCount();
        var sw = Stopwatch.StartNew();
        await Parallel(o.Creates, o.Concurrency, call, $"[{backend}] {label}");
        var rate = o.Creates / sw.Elapsed.TotalSeconds;
        var compiled = System.Runtime.JitInfo.GetCompiledMethodCount() - jit;
        var calls = "";
        if (etcd is not null)
        {
            var after = await EtcdCalls(etcd);
            calls = $" ({(after.Range - before.Range) / (double)o.Creates:N1} reads + {(after.Txn - before.Txn) / (double)o.Creates:N1} txns per call)";
        }
        Console.WriteLine($"[{backend}] {what}: {rate:N0}/s{calls}; {compiled} methods JIT-compiled meanwhile");
        rows.Add($"| {backend} | {what}, {o.Concurrency} concurrent, {o.Creates:N0} calls | {rate:N0}/s{calls} |");
        return rate;
    }
    Func<int, Task> ApiServices() { var from = next; next += o.Creates; return async i => await client.CreateServiceAsync(Service(from + i)); }
    Func<int, Task> ApiServers() { var r = round++; return async i => await client.CreateServerAsync(NewServer(i, r)); }
    RealServer NewServer(int i, int r) => Server(i * 7 % o.Services, o.Servers + r * (o.Creates * 7 / o.Services + 1) + i * 7 / o.Services);

    // Not timed: rounds of a few hundred calls of each kind first. Tiered compilation recompiles hot methods
    // (instrumented, then optimised) for seconds after their first calls, on a core of its own, which a daemon that has
    // run for a minute no longer pays; with one round the first timed row shared the CPU with ~600 compilations. The
    // rounds go on until one compiles almost nothing (or 10). The services are numbered past every range the timed rows
    // take from `next`; the servers of each round get an endpoint round of their own.
    var warm = Math.Min(200, o.Creates);
    var jitBefore = System.Runtime.JitInfo.GetCompiledMethodCount();
    for (var w = 0; w < 10; w++)
    {
        var jit = System.Runtime.JitInfo.GetCompiledMethodCount();
        var from = o.Services + o.Creates * 16 + w * warm;
        if (etcd is not null) await EtcdCalls(etcd); // what Timed calls around each row
        await Parallel(warm, o.Concurrency, async i => await client.CreateServiceAsync(Service(from + i)), $"[{backend}] warm-up services");
        var warmRound = round++;
        await Parallel(warm, o.Concurrency, async i => await client.CreateServerAsync(NewServer(i, warmRound)), $"[{backend}] warm-up servers");
        var compiled = System.Runtime.JitInfo.GetCompiledMethodCount() - jit;
        if (compiled < 20) { Console.WriteLine($"[{backend}] warm-up: {w + 1} rounds, {System.Runtime.JitInfo.GetCompiledMethodCount() - jitBefore:N0} methods compiled, {compiled} in the last"); break; }
        await Task.Delay(200); // the JIT's background queue
    }
    if (etcd is null)
    {
        await Timed($"CreateService at {o.Services:N0} existing (API, reconcile loop running)", "creates", ApiServices());
        await Timed($"CreateServer at {total:N0} existing (API, reconcile loop running)", "server creates", ApiServers());
        return rows;
    }

    // On etcd the API's rate is set beside raw transactions of the same value sizes, in alternating pairs: etcd's own
    // rate drifts by 2× within a run (its fsyncs, the page cache), and the JIT's last tier-ups land in the first pair,
    // so one API row and one raw row taken a minute apart measure the drift as much as the API. The ratio is the
    // median of the pairs'.
    using var raw = GrpcChannel.ForAddress(etcd.Endpoint);
    var rawClient = new dotnet_etcd.EtcdClient(raw.CreateCallInvoker());
    Func<int, Task> RawCreate(string dir, Func<int, IMessage> value) => async i =>
    {
        var key = ByteString.CopyFromUtf8($"/{dir}/{i}");
        var txn = new Etcdserverpb.TxnRequest();
        txn.Compare.Add(new Etcdserverpb.Compare { Key = key, Target = Etcdserverpb.Compare.Types.CompareTarget.Create, Result = Etcdserverpb.Compare.Types.CompareResult.Equal, CreateRevision = 0 });
        txn.Success.Add(new Etcdserverpb.RequestOp { RequestPut = new Etcdserverpb.PutRequest { Key = key, Value = value(i).ToByteString() } });
        await rawClient.TransactionAsync(txn);
    };
    var serviceRatios = new List<double>();
    var serverRatios = new List<double>();
    for (var pair = 0; pair < CreatePairs; pair++)
    {
        var service = await Timed($"CreateService at {o.Services:N0} existing (API, reconcile loop running), pair {pair + 1}", "creates", ApiServices());
        var rawService = await Timed($"raw etcd create-if-absent txn (service value size), pair {pair + 1}", "raw txns", RawCreate($"bench-raw-{pair}", i => Service(next + i)));
        var server = await Timed($"CreateServer at {total:N0} existing (API, reconcile loop running), pair {pair + 1}", "server creates", ApiServers());
        var rawServer = await Timed($"raw etcd create-if-absent txn (server value size), pair {pair + 1}", "raw server txns", RawCreate($"bench-raw-servers-{pair}", i => Server(i, o.Servers)));
        serviceRatios.Add(service / rawService);
        serverRatios.Add(server / rawServer);
    }
    string Ratios(List<double> r) => $"{r.Order().ElementAt(r.Count / 2):P0} ({string.Join(", ", r.Select(x => x.ToString("P0", CultureInfo.InvariantCulture)))})";
    rows.Add($"| {backend} | CreateService / raw, CreateServer / raw (API, loop running): median of {CreatePairs} alternating pairs (each pair) | {Ratios(serviceRatios)}; {Ratios(serverRatios)} |");
    Console.WriteLine($"[etcd3] CreateService / raw = {Ratios(serviceRatios)}; CreateServer / raw = {Ratios(serverRatios)}");

    await app.Services.GetRequiredService<ReconcileLoop>().StopAsync(CancellationToken.None);
    await Timed("CreateService (API, reconcile loop stopped)", "creates, loop stopped", ApiServices());
    await Timed("CreateServer (API, reconcile loop stopped)", "server creates, loop stopped", ApiServers());
    await using (var store = new Merlin.Store.Etcd.EtcdStore(new Merlin.Store.Etcd.EtcdStoreOptions
    {
        Endpoints = [etcd.Endpoint], Timeout = TimeSpan.FromSeconds(30),
        DeriveTable = Merlin.Api.LookupTables.Deriver(TimeProvider.System, Merlin.Api.LookupTables.DefaultWindow), KeepsTable = Merlin.Api.LookupTables.KeepsTable,
    }))
    {
        var from = next; next += o.Creates;
        await Timed("CreateService (the store alone, no API)", "store creates", i => store.CreateServiceAsync(Merlin.Store.Protobuf.StoredRecords.Of(Service(from + i))));
        var r = round++;
        await Timed("CreateServer (the store alone, no API)", "store server creates", i => store.CreateServerAsync(Merlin.Store.Protobuf.StoredRecords.Of(NewServer(i, r))));
    }
    // Without KeepsTable every server write reads the service, its servers and its table first (before session 13).
    await using (var store = new Merlin.Store.Etcd.EtcdStore(new Merlin.Store.Etcd.EtcdStoreOptions
    {
        Endpoints = [etcd.Endpoint], Timeout = TimeSpan.FromSeconds(30),
        DeriveTable = Merlin.Api.LookupTables.Deriver(TimeProvider.System, Merlin.Api.LookupTables.DefaultWindow),
    }))
    {
        var r = round++;
        await Timed("CreateServer (the store alone, a read before each write as before)", "store server creates, read first", i => store.CreateServerAsync(Merlin.Store.Protobuf.StoredRecords.Of(NewServer(i, r))));
    }

    return rows;
}

// etcd's own count of the unary KV calls it has handled (all result codes): reads and transactions.
static async Task<(long Range, long Txn)> EtcdCalls(EtcdServer etcd)
{
    using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
    var text = await http.GetStringAsync($"{etcd.Endpoint}/metrics");
    long Count(string method) => text.Split('\n')
        .Where(l => l.StartsWith("grpc_server_handled_total{", StringComparison.Ordinal) && l.Contains($"grpc_method=\"{method}\"", StringComparison.Ordinal))
        .Sum(l => (long)double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
    return (Count("Range"), Count("Txn"));
}

// The daemon alone: the built merlin binary as its own process (--dataplane none) on the store just measured, its
// RSS read from /proc once /readyz says its first pass is done, and again 5 s later.
static async Task<string> DaemonProcessRss(string backend, DaemonOptions options, Args o, IReadOnlyList<(string Name, string Value)> variables)
{
    var binary = Path.Combine(AppContext.BaseDirectory, "merlin");
    int port = FreePort(), health = FreePort();
    var start = new ProcessStartInfo(binary) { RedirectStandardOutput = true, RedirectStandardError = true };
    foreach (var (name, value) in variables) start.Environment[name] = value;
    var env = variables.Count == 0 ? "" : $", {string.Join(" ", variables.Select(e => $"{e.Name}={e.Value}"))}";
    foreach (var a in new[] { "--store-backend", backend, "--dataplane", "none", "--listen-address", "127.0.0.1", "--port", $"{port}",
                 "--health-listen-address", "127.0.0.1", "--health-port", $"{health}", "--state-dir", options.StateDir!, "--log-level", "warning",
                 "--reconcile-sync-period", "1h" })
        start.ArgumentList.Add(a);
    if (backend == "sqlite") { start.ArgumentList.Add("--store-path"); start.ArgumentList.Add(options.StorePath!); }
    else { start.ArgumentList.Add("--store-endpoints"); start.ArgumentList.Add(string.Join(",", options.StoreEndpoints)); start.ArgumentList.Add("--store-timeout"); start.ArgumentList.Add("30s"); }
    using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {binary}");
    var output = new System.Text.StringBuilder();
    process.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
    process.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
    process.BeginOutputReadLine();
    process.BeginErrorReadLine();
    try
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var clock = Stopwatch.StartNew();
        await Poll.UntilAsync(async () =>
        {
            if (process.HasExited) throw new InvalidOperationException($"merlin exited ({process.ExitCode}): {output}");
            try { return (await http.GetAsync($"http://127.0.0.1:{health}/readyz")).IsSuccessStatusCode; }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { return false; } // not listening yet, or too busy to answer
        }, "the merlin process's first pass (/readyz)", limit: TimeSpan.FromMinutes(5), interval: TimeSpan.FromMilliseconds(200));
        var ready = Rss(process.Id);
        await Task.Delay(TimeSpan.FromSeconds(5));
        var later = Rss(process.Id);
        if (o.DaemonHold > TimeSpan.Zero) // time to look at it (dotnet-gcdump collect -p, /proc/<pid>/smaps_rollup)
        {
            Console.WriteLine($"[{backend}] merlin process {process.Id} kept for {o.DaemonHold.TotalSeconds:N0} s (--daemon-hold)");
            await Task.Delay(o.DaemonHold);
        }
        var servers = o.Services * o.Servers + (o.RssOnly ? 0 : o.Creates);
        Console.WriteLine($"[{backend}] merlin process (--dataplane none{env}) ready after {clock.Elapsed.TotalSeconds:N1} s: RSS {ready:N0} MiB, 5 s later {later:N0} MiB");
        return $"| {backend} | daemon RSS (separate merlin process, --dataplane none{env}) at {servers:N0} servers: at ready / 5 s later | {ready:N0} / {later:N0} MiB |";
    }
    finally
    {
        if (!process.HasExited) process.Kill(entireProcessTree: true);
        await process.WaitForExitAsync();
    }

    static double Rss(int pid) => File.ReadLines($"/proc/{pid}/status").Where(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
        .Select(l => double.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024).First();
}

static int FreePort()
{
    using var l = new TcpListener(IPAddress.Loopback, 0);
    l.Start();
    return ((IPEndPoint)l.LocalEndpoint).Port;
}

sealed record Args(string Store, int Services, int Servers, int Concurrency, int ListRuns, string Fill = "api", int Creates = 1000, int Changes = 5, int Daemons = 0, int EtcdMembers = 1,
    int NftDaemons = 0, bool Table = false, int FleetServices = 100, int FleetChanges = 50, bool ListOnly = false, bool OnlyCreates = false, bool RssOnly = false)
{
    /// <summary>--packet-rounds N (with --table): rounds of the packet path's row; 0 leaves it out.</summary>
    public int PacketRounds { get; init; } = 4;

    /// <summary>--daemon-hold SECONDS: how long to keep each separate merlin after its RSS is read.</summary>
    public TimeSpan DaemonHold { get; init; }

    /// <summary>--daemon-env, each: one separate merlin process with these variables (none for "default").</summary>
    public IReadOnlyList<IReadOnlyList<(string Name, string Value)>> DaemonEnv { get; init; } = [];

    private static IReadOnlyList<(string Name, string Value)> Variables(string text) => text == "default" ? [] :
        [.. text.Split(',').Select(v => v.Split('=', 2) is [var n, var value] && n.Length > 0
            ? (n, value) : throw new ArgumentException($"--daemon-env: '{v}' is not NAME=VALUE (or 'default')"))];

    public static Args Parse(string[] a)
    {
        string Get(string name, string fallback) => Array.IndexOf(a, name) is var i && i >= 0 && i + 1 < a.Length ? a[i + 1] : fallback;
        var store = Get("--store", "both");
        if (store is not ("sqlite" or "etcd3" or "both")) throw new ArgumentException("--store: sqlite, etcd3 or both");
        var fill = Get("--fill", a.Contains("--list-only") ? "store" : "api");
        if (fill is not ("api" or "store")) throw new ArgumentException("--fill: api or store");
        if (a.Contains("--list-only") && fill != "store") throw new ArgumentException("--list-only: needs --fill store (its default)");
        return new Args(store, int.Parse(Get("--services", "10000")), int.Parse(Get("--servers", "10")),
            int.Parse(Get("--concurrency", "32")), int.Parse(Get("--list-runs", "10")), fill,
            int.Parse(Get("--creates", "1000")), int.Parse(Get("--changes", "5")), int.Parse(Get("--daemons", "0")), int.Parse(Get("--etcd-members", "3")),
            int.Parse(Get("--nft-daemons", a.Contains("--table") ? "2" : "0")), a.Contains("--table"), int.Parse(Get("--fleet-services", "100")), int.Parse(Get("--fleet-changes", "50")),
            a.Contains("--list-only"),
            Get("--only", "") switch { "" => false, "creates" => true, var other => throw new ArgumentException($"--only: \"{other}\" is not a part (creates)") },
            a.Contains("--rss"))
        {
            DaemonHold = TimeSpan.FromSeconds(int.Parse(Get("--daemon-hold", "0"))),
            PacketRounds = int.Parse(Get("--packet-rounds", "4")) is var rounds and >= 0 and <= 20 ? rounds : throw new ArgumentException("--packet-rounds: 0…20"),
            DaemonEnv = [.. a.Select((v, i) => (v, i)).Where(p => p.v == "--daemon-env" && p.i + 1 < a.Length).Select(p => Variables(a[p.i + 1]))],
        };
    }
}

/// <summary>The records and helpers every part of the harness shares.</summary>
static class Harness
{
    /// <summary>Alternating (API, raw etcd) pairs of create rows on etcd; the ratio is their median.</summary>
    public const int CreatePairs = 3;

    public static VirtualService Service(int i) => new()
    {
        Id = $"svc-{i}",
        Key = new VirtualService.Types.Key { Ip = $"198.18.{i / 250}.{i % 250 + 1}", Port = 80, Protocol = Protocol.Tcp },
        Config = new VirtualService.Types.Config { Scheduler = "mh", Flags = { "mh-port" } },
    };

    public static RealServer Server(int service, int j) => new()
    {
        ServiceID = $"svc-{service}",
        Key = new RealServer.Types.Key { Ip = $"198.19.{j}.{service % 250 + 1}", Port = (uint)(8080 + service / 250) },
        Config = new RealServer.Types.Config { Weight = 1, Forward = ForwardMethod.Route },
    };

    public static async Task Parallel(int count, int concurrency, Func<int, Task> call, string label)
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

    public static double P(List<double> sorted, double q) => sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];
}
