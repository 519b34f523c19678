using System.Diagnostics;
using System.Globalization;
using System.Net.Http;
using k8s;
using k8s.Models;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Mapping;
using Microsoft.Extensions.Logging;
using static Merlin.Kubernetes.Bench.Util;
using Wire = Merlin.Contracts;

namespace Merlin.Kubernetes.Bench;

public static class Scenarios
{
    private static void Log(string scenario, string line) => Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} [{scenario}] {line}");

    private static Task<Cluster> ClusterAsync(BenchArgs o, ILoggerFactory logs, CancellationToken ct) => Cluster.StartAsync(o.Daemon == "process", logs, ct);

    private static async Task<long> WaitAsync(Func<bool> done, TimeSpan limit, string what, CancellationToken ct, int pollMs = 10) =>
        await UntilAsync(done, limit, ct, pollMs) ?? throw new TimeoutException($"{what} not within {limit.TotalSeconds:N0} s");

    // ---------------------------------------------------------------------------------------------------------------
    // 1. Service created → status written. Services are created one at a time through the official client, at a fixed
    //    rate (--rate; 0 = back to back). Latency: from the create call returning to the bench's own watch seeing the
    //    controller's status patch with an ingress IP; and to the Ready condition (Merlin programmed on every node).
    public static async Task LatencyAsync(BenchArgs o, ScenarioResult r, ILoggerFactory logs, CancellationToken ct)
    {
        await using var c = await ClusterAsync(o, logs, ct);
        c.Nodes(o.LatencyNodes);
        // --latency-background N: N Services already served (synced before the measured ones are created).
        if (o.LatencyBackground > 0) await c.CreateServicesAsync(Enumerable.Range(0, o.LatencyBackground).Select(i => $"bg-{i}"), local: false, ct);
        await using var watch = new StatusWatch(c.Api.ClientConfiguration());
        await watch.Opened.WaitAsync(TimeSpan.FromSeconds(30), ct);
        var replica = c.StartReplica("a", o.Workers);
        await WaitAsync(() => replica.Host.Controller.FirstSyncDone, TimeSpan.FromSeconds(600), "the first sync", ct, 20);
        var reconciles0 = replica.Host.Controller.Queue.Handled;
        // One Service first, not measured: the first pass through each code path pays for JIT.
        for (var w = 0; w < 3; w++)
        {
            await c.Kube.CoreV1.CreateNamespacedServiceAsync(Cluster.ServiceObject($"warmup-{w}"), "default", cancellationToken: ct);
            await WaitAsync(() => watch.Ready.ContainsKey($"warmup-{w}"), TimeSpan.FromSeconds(60), "the warm-up Service's status", ct);
        }
        Log(r.Name, $"creating {o.Services} Services over {o.LatencyNodes} nodes, {(o.Rate > 0 ? $"{o.Rate}/s" : "back to back")}");
        var created = new Dictionary<string, long>(StringComparer.Ordinal);
        var t0 = Stopwatch.GetTimestamp();
        var limit = TimeSpan.FromSeconds((o.Rate > 0 ? o.Services / o.Rate : 0) + 120);
        for (var i = 0; i < o.Services; i++)
        {
            if (o.Rate > 0)
            {
                var due = TimeSpan.FromSeconds(i / o.Rate) - Stopwatch.GetElapsedTime(t0);
                if (due > TimeSpan.Zero) await Task.Delay(due, ct);
            }
            if (Stopwatch.GetElapsedTime(t0) > limit) throw new TimeoutException($"creating {o.Services} Services took over {limit.TotalSeconds:N0} s");
            var name = $"svc-{i}";
            await c.Kube.CoreV1.CreateNamespacedServiceAsync(Cluster.ServiceObject(name), "default", cancellationToken: ct);
            created[name] = Stopwatch.GetTimestamp();
        }
        var createSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        await UntilAsync(() => created.Keys.All(watch.Ready.ContainsKey), TimeSpan.FromSeconds(60), ct, 20);

        List<double> Latencies(IReadOnlyDictionary<string, long> seen) =>
            created.Where(kv => seen.ContainsKey(kv.Key)).Select(kv => Math.Max(0, Ms(kv.Value, seen[kv.Key]))).Order().ToList();
        var ingress = Latencies(watch.Ingress);
        var ready = Latencies(watch.Ready);
        var missing = created.Keys.Count(k => !watch.Ready.ContainsKey(k));
        r.Values["services"] = o.Services;
        r.Values["nodes"] = o.LatencyNodes;
        r.Values["rate_per_s"] = o.Rate;
        r.Values["achieved_rate_per_s"] = Math.Round(o.Services / createSeconds, 1);
        r.Values["missing"] = missing;
        foreach (var (label, list) in new[] { ("ingress", ingress), ("ready", ready) })
            foreach (var (q, p) in new[] { ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0) })
                r.Values[$"{label}_{q}_ms"] = Math.Round(Quantile(list, p), 1);
        var reconciles = replica.Host.Controller.Queue.Handled - reconciles0;
        r.Values["background_services"] = o.LatencyBackground;
        r.Values["reconciles"] = reconciles;
        r.Values["reconcile_failures"] = replica.Host.Controller.Queue.Failed;
        var errors = Errors(await replica.ScrapeAsync(ct));
        r.Values["reconcile_errors"] = errors;
        var shape = $"{o.Services} Services × {o.LatencyNodes} nodes, {(o.Rate > 0 ? $"{o.Rate:N0}/s" : $"back to back ({o.Services / createSeconds:N0}/s)")}{(o.LatencyBackground > 0 ? $", {o.LatencyBackground:N0} Services already served" : "")}";
        var p99 = missing > 0 ? double.PositiveInfinity : Quantile(ingress, 0.99);
        r.Rows.Add(new($"created → status with ingress IP ({shape})",
            $"p50 {F(Quantile(ingress, 0.5))} ms, p90 {F(Quantile(ingress, 0.9))} ms, p99 {F(Quantile(ingress, 0.99))} ms, max {F(Quantile(ingress, 1))} ms{(missing > 0 ? $", {missing} never" : "")}",
            "p99 ≤ 1 s", p99 <= 1000));
        r.Rows.Add(new("created → Ready condition (Merlin programmed on every node)",
            $"p50 {F(Quantile(ready, 0.5))} ms, p90 {F(Quantile(ready, 0.9))} ms, p99 {F(Quantile(ready, 0.99))} ms, max {F(Quantile(ready, 1))} ms"));
        r.Rows.Add(new("reconciles while creating (failed, by reason)", $"{reconciles:N0} for {o.Services} Services ({errors})"));
        Log(r.Name, $"ingress p50 {F(Quantile(ingress, 0.5))} p99 {F(Quantile(ingress, 0.99))} max {F(Quantile(ingress, 1))} ms; ready p99 {F(Quantile(ready, 0.99))} ms");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // 2. First full sync at scale: Services × nodes in the API server before the controller starts (ETP Cluster, no
    //    node health checks). Time from the replica starting to leading, to FirstSyncDone, to every status Ready (the
    //    bench's watch) and every server in Merlin (one List). Writes made. Memory: the GC heap of this process after
    //    the sync minus before the replica started (the API server already holding every object), and RSS; then the
    //    real merlin-k8s as a process of its own takes over the same cluster (a restart: Merlin already programmed)
    //    and its RSS is read from /proc.
    public static async Task SyncAsync(BenchArgs o, ScenarioResult r, ILoggerFactory logs, CancellationToken ct)
    {
        await using var c = await ClusterAsync(o, logs, ct);
        c.Nodes(o.SyncNodes);
        var names = Enumerable.Range(0, o.SyncServices).Select(i => $"svc-{i}").ToList();
        var sw = Stopwatch.StartNew();
        await c.CreateServicesAsync(names, local: false, ct);
        Log(r.Name, $"{o.SyncServices} Services and {o.SyncNodes} nodes in the API server ({sw.Elapsed.TotalSeconds:N1} s); starting the controller with {o.Workers} workers");
        await using var watch = new StatusWatch(c.Api.ClientConfiguration());
        await watch.Opened.WaitAsync(TimeSpan.FromSeconds(30), ct);

        var heap0 = SettledHeap();
        var limit = TimeSpan.FromSeconds(Math.Max(120, (long)o.SyncServices * o.SyncNodes / 100.0)); // bounded: 1,000 s for 100,000 servers
        var (heap1, host) = await InProcessSyncAsync(o, r, c, watch, heap0, limit, ct);
        // The replica is stopped and forgotten: what the heap loses now is what the controller held.
        var heap2 = SettledHeap();
        r.Values["controller_collected"] = !host.IsAlive;
        r.Values["gc_heap_without_controller_mib"] = Math.Round(Mib(heap2), 1);
        // Only meaningful if the stopped controller was collected (something in the process may still root it).
        if (!host.IsAlive)
            r.Rows.Add(new("GC heap held by the controller: with it − after it is stopped and collected",
                $"{F(Mib(heap1 - heap2), 1)} MiB (the rest of the growth, {F(Mib(heap2 - heap0), 1)} MiB, is the API server's: watch history, request log, the objects' new status)",
                "≤ 200 MiB", Mib(heap1 - heap2) <= 200));

        if (!o.ControllerProcess) return;
        for (var run = 0; run < o.ControllerEnvs.Count; run++)
        {
            // The real merlin-k8s process takes over (another lease name: the in-process replica is stopped first).
            var env = o.ControllerEnvs[run];
            var envText = env.Count == 0 ? "default environment" : string.Join(" ", env.Select(kv => $"{kv.Key}={kv.Value}"));
            var x = o.ControllerEnvs.Count == 1 ? "" : $"_{run}";
            var (p, port) = c.StartControllerProcess($"proc{run}", $"merlin-k8s-proc{run}", o.Workers, env);
            var pStart = Stopwatch.GetTimestamp();
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };
            double firstSync = 0, merlinWrites = 0;
            var done = await UntilAsync(async () =>
            {
                if (p.HasExited) throw new InvalidOperationException($"merlin-k8s exited with {p.ExitCode}");
                try
                {
                    var text = await http.GetStringAsync("/metrics", ct);
                    firstSync = Metric(text, "merlin_k8s_first_sync_seconds");
                    merlinWrites = Metric(text, "merlin_k8s_merlin_writes_total");
                    return firstSync > 0;
                }
                catch (HttpRequestException) { return false; }
            }, limit, ct, 100) ?? throw new TimeoutException("merlin-k8s (process): no first sync");
            var untilSync = Ms(pStart, done);
            var (pRss0, _) = Memory(p.Id);
            var samples = new List<long>();
            for (var i = 0; i < (o.Quick ? 2 : 10); i++)
            {
                await Task.Delay(1000, ct);
                samples.Add(Memory(p.Id).Rss);
            }
            var (_, pPeak) = Memory(p.Id);
            var (pAnon, pFile, pShmem) = ResidentParts(p.Id);
            var pCpu = CpuSeconds(p.Id);
            var steady = samples.Max();
            r.Values[$"process_start_to_first_sync_ms{x}"] = Math.Round(untilSync);
            r.Values[$"process_first_sync_metric_s{x}"] = firstSync;
            r.Values[$"process_merlin_writes{x}"] = merlinWrites;
            r.Values[$"process_rss_at_sync_mib{x}"] = Math.Round(Mib(pRss0), 1);
            r.Values[$"process_rss_steady_max_mib{x}"] = Math.Round(Mib(steady), 1);
            r.Values[$"process_rss_peak_mib{x}"] = Math.Round(Mib(pPeak), 1);
            r.Values[$"process_cpu_s{x}"] = Math.Round(pCpu, 1);
            r.Rows.Add(new($"merlin-k8s as its own process ({envText}), taking over (Merlin already programmed): start → first sync",
                $"{F(untilSync / 1000, 1)} s (merlin_k8s_first_sync_seconds {F(firstSync, 2)}), {merlinWrites:N0} Merlin writes, {F(pCpu, 1)} s CPU"));
            r.Values[$"process_env{x}"] = envText;
            r.Rows.Add(new($"merlin-k8s process RSS ({envText}): steady (max of {samples.Count} samples, 1 s apart, after the sync) / peak",
                $"{F(Mib(steady))} MiB / {F(Mib(pPeak))} MiB", "≤ 200 MiB", Mib(steady) <= 200));
            r.Values[$"process_rss_anon_mib{x}"] = Math.Round(Mib(pAnon), 1);
            r.Values[$"process_rss_file_mib{x}"] = Math.Round(Mib(pFile), 1);
            r.Values[$"process_rss_shmem_mib{x}"] = Math.Round(Mib(pShmem), 1);
            r.Rows.Add(new($"merlin-k8s process ({envText}): RSS anonymous / file-backed / shared memory",
                $"{F(Mib(pAnon))} / {F(Mib(pFile))} / {F(Mib(pShmem))} MiB"));
            Log(r.Name, $"merlin-k8s process ({envText}): first sync {F(untilSync / 1000, 1)} s after start, RSS {F(Mib(steady))} MiB (peak {F(Mib(pPeak))} MiB; anonymous {F(Mib(pAnon))}, file {F(Mib(pFile))}, shared {F(Mib(pShmem))})");
            c.StopChild(p);
        }
    }

    private static async Task<(long Heap, WeakReference Host)> InProcessSyncAsync(BenchArgs o, ScenarioResult r, Cluster c, StatusWatch watch, long heap0, TimeSpan limit, CancellationToken ct)
    {
        var (rss0, _) = Memory(Environment.ProcessId);
        var requests0 = c.Api.Requests.Count;
        var ownCpu0 = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        var daemonCpu0 = c.DaemonPid is { } dp ? CpuSeconds(dp) : double.NaN;
        var replica = c.StartReplica("a", o.Workers);
        var controller = replica.Host.Controller;
        var expectedServers = (long)o.SyncServices * o.SyncNodes;
        using var progressStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var progress = Task.Run(async () =>
        {
            while (!progressStop.IsCancellationRequested)
            {
                try { await Task.Delay(5000, progressStop.Token); } catch (OperationCanceledException) { return; }
                Log(r.Name, $"{Stopwatch.GetElapsedTime(replica.Started).TotalSeconds:N0} s: {replica.Host.Merlin.Writes.GetValueOrDefault("CreateServer"):N0} servers created, {watch.Ready.Count} Ready, queue {controller.Queue.Depth}, load {LoadAverage()}");
            }
        });
        long leading, synced;
        try
        {
            leading = await WaitAsync(() => replica.Host.Leading, TimeSpan.FromSeconds(60), "leadership", ct);
            synced = await WaitAsync(() => controller.FirstSyncDone, limit, "FirstSyncDone", ct, 20);
        }
        finally
        {
            progressStop.Cancel();
            await progress;
        }
        var ownCpu = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - ownCpu0;
        var daemonCpu = c.DaemonPid is { } dp2 ? CpuSeconds(dp2) - daemonCpu0 : double.NaN;
        var allReady = await UntilAsync(() => watch.Ready.Count >= o.SyncServices, TimeSpan.FromSeconds(60), ct, 20);
        var lastReady = watch.Ready.Values.DefaultIfEmpty(0).Max();
        // Counted in a method of its own, so the List's 100,000 records are not held while the heap is measured.
        var (servers, merlinServices) = await CountMerlinAsync(c, ct);
        var listed = Stopwatch.GetTimestamp();
        var writes = replica.Host.Merlin.Writes.ToDictionary(kv => kv.Key, kv => kv.Value);
        var kubeWrites = c.Api.Requests.Skip(requests0).Where(q => !q.StartsWith("GET ", StringComparison.Ordinal))
            .GroupBy(q => q[..q.IndexOf(' ')] + (q.Contains("/status", StringComparison.Ordinal) ? " status" : q.Contains("/events", StringComparison.Ordinal) ? " events" : q.Contains("/leases", StringComparison.Ordinal) ? " leases" : ""))
            .ToDictionary(g => g.Key, g => g.Count());
        var page = await replica.ScrapeAsync(ct);
        var reconcileSeconds = Metric(page, "merlin_k8s_reconcile_duration_seconds_sum");
        var errors = Errors(page);

        // Steady state: the controller idle, following its watches.
        await Task.Delay(TimeSpan.FromSeconds(o.Quick ? 1 : 5), ct);
        var heap1 = SettledHeap();
        var (rss1, peak1) = Memory(Environment.ProcessId);

        var toLead = Ms(replica.Started, leading);
        var toSync = Ms(replica.Started, synced);
        r.Values["services"] = o.SyncServices;
        r.Values["nodes"] = o.SyncNodes;
        r.Values["workers"] = o.Workers;
        r.Values["to_leading_ms"] = Math.Round(toLead);
        r.Values["to_first_sync_ms"] = Math.Round(toSync);
        r.Values["to_all_ready_ms"] = allReady is null ? null : Math.Round(Ms(replica.Started, lastReady));
        r.Values["all_ready"] = watch.Ready.Count;
        r.Values["merlin_servers"] = servers;
        r.Values["merlin_services"] = merlinServices;
        r.Values["merlin_list_after_sync_ms"] = Math.Round(Ms(replica.Started, listed));
        r.Values["merlin_writes"] = writes;
        r.Values["kubernetes_writes"] = kubeWrites;
        r.Values["reconciles"] = controller.Queue.Handled;
        r.Values["reconcile_failures"] = controller.Queue.Failed;
        r.Values["reconcile_errors"] = errors;
        r.Values["reconcile_seconds_sum"] = Math.Round(reconcileSeconds, 1);
        r.Values["bench_process_cpu_s"] = Math.Round(ownCpu, 1);
        r.Values["daemon_process_cpu_s"] = Math.Round(daemonCpu, 1);
        r.Values["gc_heap_before_mib"] = Math.Round(Mib(heap0), 1);
        r.Values["gc_heap_after_mib"] = Math.Round(Mib(heap1), 1);
        r.Values["rss_before_mib"] = Math.Round(Mib(rss0), 1);
        r.Values["rss_after_mib"] = Math.Round(Mib(rss1), 1);
        r.Values["rss_peak_mib"] = Math.Round(Mib(peak1), 1);

        var shape = $"{o.SyncServices:N0} Services × {o.SyncNodes} nodes, {o.Workers} workers";
        r.Rows.Add(new($"replica start → leading ({shape})", $"{F(toLead)} ms"));
        r.Rows.Add(new("replica start → FirstSyncDone", $"{F(toSync / 1000, 1)} s", "≤ 30 s", toSync <= 30_000));
        r.Rows.Add(new("replica start → every status Ready (watch) / servers in Merlin (List)",
            $"{(allReady is null ? $"only {watch.Ready.Count} Ready" : $"{F(Ms(replica.Started, lastReady) / 1000, 1)} s")} / {servers:N0} of {expectedServers:N0} servers"));
        r.Rows.Add(new("writes: Merlin / Kubernetes", $"{string.Join(", ", writes.OrderBy(k => k.Key).Select(kv => $"{kv.Key} {kv.Value:N0}"))} / {string.Join(", ", kubeWrites.OrderBy(k => k.Key).Select(kv => $"{kv.Key} {kv.Value:N0}"))}"));
        r.Rows.Add(new("CPU during the sync: bench process (controller + API server + watch) / merlin daemon",
            $"{F(ownCpu, 1)} s / {(double.IsNaN(daemonCpu) ? "in this process" : $"{F(daemonCpu, 1)} s")} over {F(toSync / 1000, 1)} s on {Environment.ProcessorCount} cores; reconciles {controller.Queue.Handled:N0} (failed: {errors}), Σ reconcile time {F(reconcileSeconds, 0)} s"));
        r.Rows.Add(new("GC heap of the bench process: after the sync − before the replica started (the controller, and the API server's growth from its writes)",
            $"{F(Mib(heap1 - heap0), 1)} MiB ({F(Mib(heap0), 1)} → {F(Mib(heap1), 1)} MiB)", "≤ 200 MiB (an upper bound for the controller)", Mib(heap1 - heap0) <= 200));
        r.Rows.Add(new("RSS of the bench process: before → after (peak)", $"{F(Mib(rss0))} → {F(Mib(rss1))} MiB ({F(Mib(peak1))} MiB)"));
        Log(r.Name, $"leading {F(toLead)} ms, FirstSyncDone {F(toSync / 1000, 1)} s, {servers:N0} servers, heap +{F(Mib(heap1 - heap0), 1)} MiB");

        await c.ForgetReplicaAsync(replica);
        return (heap1, new WeakReference(replica.Host));
    }

    private static async Task<(long Servers, int Services)> CountMerlinAsync(Cluster c, CancellationToken ct)
    {
        var list = await c.ListMerlinAsync(ct);
        var ours = list.Items.Where(i => i.Service.Id.StartsWith(Annotations.IdPrefix, StringComparison.Ordinal)).ToList();
        return (ours.Sum(i => (long)i.Servers.Count), ours.Count);
    }

    /// <summary>The controller's failed reconciles by reason, from its /metrics page (merlin_k8s_reconcile_errors_total).</summary>
    public static string Errors(string page)
    {
        var parts = new[] { "Conflict", "KubernetesApi", "MerlinRefused", "MerlinUnreachable", "Internal" }
            .Select(reason => (reason, n: Metric(page, $"merlin_k8s_reconcile_errors_total{{reason=\"{reason}\"}}"))).Where(x => x.n > 0).Select(x => $"{x.reason} {x.n:N0}");
        return string.Join(", ", parts) is { Length: > 0 } text ? text : "none";
    }

    private static long SettledHeap()
    {
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        return GC.GetTotalMemory(forceFullCollection: true);
    }

    private static double Metric(string text, string name)
    {
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal))
                return double.Parse(line[(name.Length + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture);
        return 0;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // 3. EndpointSlice churn: ETP Local Services, one EndpointSlice each with 4 endpoints per node. Updates are written
    //    straight into the API server's store (TestApiServer.Put: the same watch event an EndpointSlice controller's
    //    write makes, without the bench's HTTP client in the way) at a fixed rate, each changing the number of ready
    //    endpoints of one Service on one node (1–4, never 0, so no node is drained). After the last update: time until
    //    Merlin's weights (List) equal the final counts everywhere; reconciles and Merlin writes against updates.
    public static async Task ChurnAsync(BenchArgs o, ScenarioResult r, ILoggerFactory logs, CancellationToken ct)
    {
        await using var c = await ClusterAsync(o, logs, ct);
        c.Nodes(o.ChurnNodes);
        var names = Enumerable.Range(0, o.ChurnServices).Select(i => $"local-{i}").ToArray();
        await c.CreateServicesAsync(names, local: true, ct);
        var ready = new int[o.ChurnServices, o.ChurnNodes];
        for (var s = 0; s < o.ChurnServices; s++)
        {
            for (var n = 0; n < o.ChurnNodes; n++) ready[s, n] = 2;
            c.Api.Put(Slice(s, names[s], ready, o.ChurnNodes));
        }
        var replica = c.StartReplica("a", o.Workers);
        var controller = replica.Host.Controller;
        await WaitAsync(() => controller.FirstSyncDone, TimeSpan.FromSeconds(120), "FirstSyncDone", ct, 20);
        var matched = await UntilAsync(async () => await MatchesAsync(c, names, ready, o.ChurnNodes, ct), TimeSpan.FromSeconds(60), ct, 100)
            ?? throw new TimeoutException("Merlin never held the initial weights");
        await Task.Delay(1000, ct);

        var handled0 = controller.Queue.Handled;
        var writes0 = replica.Host.Merlin.Writes.Values.Sum();
        var total = (int)Math.Round(o.ChurnRate * o.ChurnSeconds);
        var random = new Random(15);
        var maxDepth = 0;
        using var samplerStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var sampler = Task.Run(async () =>
        {
            while (!samplerStop.IsCancellationRequested)
            {
                maxDepth = Math.Max(maxDepth, controller.Queue.Depth);
                try { await Task.Delay(10, samplerStop.Token); } catch (OperationCanceledException) { return; }
            }
        });
        Log(r.Name, $"{total:N0} updates at {o.ChurnRate}/s over {o.ChurnServices} Services × {o.ChurnNodes} nodes");
        var t0 = Stopwatch.GetTimestamp();
        var sent = 0;
        var hardStop = TimeSpan.FromSeconds(o.ChurnSeconds * 2 + 5); // bounded even if the writer cannot keep the rate
        while (sent < total && Stopwatch.GetElapsedTime(t0) < hardStop)
        {
            var due = Math.Min(total, (int)(Stopwatch.GetElapsedTime(t0).TotalSeconds * o.ChurnRate) + 1);
            for (; sent < due; sent++)
            {
                var s = random.Next(o.ChurnServices);
                var n = random.Next(o.ChurnNodes);
                var k = random.Next(1, 4);
                ready[s, n] = k >= ready[s, n] ? k + 1 : k; // 1–4, always different from before
                c.Api.Put(Slice(s, names[s], ready, o.ChurnNodes));
            }
            await Task.Delay(1, ct);
        }
        var last = Stopwatch.GetTimestamp();
        var writeSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        var converged = await UntilAsync(async () => await MatchesAsync(c, names, ready, o.ChurnNodes, ct), TimeSpan.FromSeconds(30), ct, 20);
        samplerStop.Cancel();
        await sampler;
        await controller.Queue.WaitIdleAsync(ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
        var reconciles = controller.Queue.Handled - handled0;
        var writes = replica.Host.Merlin.Writes.Values.Sum() - writes0;
        var lag = converged is { } t ? Ms(last, t) : double.PositiveInfinity;
        r.Values["services"] = o.ChurnServices;
        r.Values["nodes"] = o.ChurnNodes;
        r.Values["updates"] = sent;
        r.Values["updates_per_s"] = Math.Round(sent / writeSeconds);
        r.Values["last_update_to_merlin_final_ms"] = converged is null ? null : Math.Round(lag);
        r.Values["reconciles"] = reconciles;
        r.Values["merlin_writes"] = writes;
        r.Values["queue_depth_max"] = maxDepth;
        r.Values["reconcile_failures"] = controller.Queue.Failed;
        var errors = Errors(await replica.ScrapeAsync(ct));
        r.Values["reconcile_errors"] = errors;
        r.Rows.Add(new($"EndpointSlice updates ({o.ChurnServices} ETP Local Services × {o.ChurnNodes} nodes)", $"{sent:N0} in {F(writeSeconds, 1)} s = {F(sent / writeSeconds)}/s (asked {o.ChurnRate:N0}/s)"));
        r.Rows.Add(new("last update → Merlin weights final everywhere", converged is null ? "not within 30 s" : $"{F(lag)} ms", "≤ 1 s", lag <= 1000));
        r.Rows.Add(new("reconciles / Merlin writes per update (coalescing)",
            $"{reconciles:N0} reconciles ({F((double)reconciles / sent, 2)} per update), {writes:N0} Merlin writes; queue depth max {maxDepth}; failed: {errors}"));
        Log(r.Name, $"{sent} updates at {F(sent / writeSeconds)}/s; final in Merlin {F(lag)} ms after the last; {reconciles} reconciles, {writes} writes");
    }

    private static V1EndpointSlice Slice(int s, string name, int[,] ready, int nodes)
    {
        var endpoints = new List<V1Endpoint>();
        for (var n = 0; n < nodes; n++)
            for (var e = 0; e < 4; e++)
                endpoints.Add(new V1Endpoint
                {
                    Addresses = [$"10.{s}.{n}.{e + 1}"],
                    NodeName = $"n{n}",
                    Conditions = new V1EndpointConditions { Ready = e < ready[s, n] },
                });
        return new V1EndpointSlice
        {
            ApiVersion = "discovery.k8s.io/v1",
            Kind = "EndpointSlice",
            Metadata = new V1ObjectMeta { Name = $"{name}-1", NamespaceProperty = "default", Labels = new Dictionary<string, string> { [Annotations.ServiceNameLabel] = name } },
            AddressType = "IPv4",
            Endpoints = endpoints,
            Ports = [new Discoveryv1EndpointPort { Name = "http", Port = 8080, Protocol = "TCP" }],
        };
    }

    private static async Task<bool> MatchesAsync(Cluster c, string[] names, int[,] ready, int nodes, CancellationToken ct)
    {
        var list = await c.ListMerlinAsync(ct);
        var byId = list.Items.ToDictionary(i => i.Service.Id, StringComparer.Ordinal);
        for (var s = 0; s < names.Length; s++)
        {
            if (!byId.TryGetValue($"{Annotations.IdPrefix}default.{names[s]}.tcp-80", out var item)) return false;
            var live = item.Servers.Where(x => x.DrainDeadline is null).ToDictionary(x => x.Key.Ip, x => x.Config.Weight, StringComparer.Ordinal);
            if (live.Count != nodes) return false;
            for (var n = 0; n < nodes; n++)
                if (!live.TryGetValue(Cluster.NodeIp(n), out var w) || w != ready[s, n]) return false;
        }
        return true;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // 4. Leader failover: two replicas with the default LeaseOptions (12 s lease, renew 8 s, retry 2 s). The leader is
    //    killed as a crash would kill it (its RunAsync cancelled without handing the lease back: it runs out), or with
    //    --failover-graceful stopped as SIGTERM stops it (the lease handed back); measured: kill → the standby leads,
    //    and kill → its FirstSyncDone. Each run then starts a fresh standby.
    public static async Task FailoverAsync(BenchArgs o, ScenarioResult r, ILoggerFactory logs, CancellationToken ct)
    {
        await using var c = await ClusterAsync(o, logs, ct);
        c.Nodes(o.FailoverNodes);
        await c.CreateServicesAsync(Enumerable.Range(0, o.FailoverServices).Select(i => $"svc-{i}"), local: false, ct);
        var defaults = new LeaseOptions("merlin-system", "merlin-k8s", "");
        var lease = (o.LeaseSeconds == (int)defaults.Duration.TotalSeconds ? defaults : defaults with
        {
            Duration = TimeSpan.FromSeconds(o.LeaseSeconds), RenewDeadline = TimeSpan.FromSeconds(o.LeaseSeconds - 1), RetryPeriod = TimeSpan.FromSeconds(1),
        }) with { HandBackOnStop = o.FailoverGraceful };
        var bySpec = o.LeaseSeconds == (int)defaults.Duration.TotalSeconds && !o.FailoverGraceful;
        Replica Start(string id) => c.StartReplica(id, o.Workers, lease with { Identity = id });
        var leader = Start("r0");
        await WaitAsync(() => leader.Host.Controller.FirstSyncDone, TimeSpan.FromSeconds(300), "the first leader's FirstSyncDone", ct, 20);
        var random = new Random(15);
        var toLead = new List<double>();
        var toSync = new List<double>();
        for (var run = 1; run <= o.FailoverRuns; run++)
        {
            var standby = Start($"r{run}");
            await WaitAsync(() => standby.Host.Synced, TimeSpan.FromSeconds(60), "the standby's caches", ct);
            // Kill at a random point of the leader's renew cycle (it renews every retry period, 2 s by default).
            await Task.Delay(TimeSpan.FromMilliseconds(3000 + random.Next(2000)), ct);
            if (standby.Host.Leading) throw new InvalidOperationException("the standby leads before the leader was killed");
            var killed = Stopwatch.GetTimestamp();
            await c.StopReplicaAsync(leader);
            var lead = await WaitAsync(() => standby.Host.Leading, TimeSpan.FromSeconds(60), "the standby to lead", ct);
            var sync = await WaitAsync(() => standby.Host.Controller.FirstSyncDone, TimeSpan.FromSeconds(120), "the new leader's FirstSyncDone", ct);
            toLead.Add(Ms(killed, lead));
            toSync.Add(Ms(killed, sync));
            Log(r.Name, $"run {run}: kill → leading {F(toLead[^1])} ms, → FirstSyncDone {F(toSync[^1])} ms ({standby.Host.Merlin.Writes.Values.Sum()} Merlin writes by the new leader)");
            leader = standby;
        }
        r.Values["runs"] = o.FailoverRuns;
        r.Values["services"] = o.FailoverServices;
        r.Values["nodes"] = o.FailoverNodes;
        r.Values["kill_to_leading_ms"] = toLead.Select(x => Math.Round(x)).ToList();
        r.Values["kill_to_first_sync_ms"] = toSync.Select(x => Math.Round(x)).ToList();
        toSync.Sort();
        toLead.Sort();
        var how = o.FailoverGraceful ? "stopped (lease handed back)" : "killed";
        r.Rows.Add(new($"leader {how} → standby leads ({o.FailoverRuns} runs, {o.FailoverServices} Services × {o.FailoverNodes} nodes, lease {o.LeaseSeconds} s)",
            $"min {F(toLead[0] / 1000, 1)} s, median {F(Quantile(toLead, 0.5) / 1000, 1)} s, max {F(toLead[^1] / 1000, 1)} s"));
        r.Rows.Add(new($"leader {how} → new leader's FirstSyncDone",
            $"min {F(toSync[0] / 1000, 1)} s, median {F(Quantile(toSync, 0.5) / 1000, 1)} s, max {F(toSync[^1] / 1000, 1)} s", bySpec ? "≤ 15 s" : null, bySpec ? toSync[^1] <= 15_000 : null));
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Not a goal of its own: the daemon's CreateServer rate with no controller in the way (services first, then servers,
    // at a few concurrencies), against the same daemon process and channel. The first full sync cannot be faster than
    // Services × nodes calls at this rate.
    public static async Task CeilingAsync(BenchArgs o, ScenarioResult r, ILoggerFactory logs, CancellationToken ct)
    {
        await using var c = await ClusterAsync(o, logs, ct);
        const int perService = 100;
        var offset = 0;
        foreach (var concurrency in o.CeilingConcurrency)
        {
            var services = (o.CeilingCalls + perService - 1) / perService;
            for (var s = 0; s < services; s++)
                await c.Merlin.CreateServiceAsync(new Wire.VirtualService
                {
                    Id = $"ceiling-{offset + s}",
                    Key = new Wire.VirtualService.Types.Key { Ip = $"198.19.{(offset + s) / 250}.{(offset + s) % 250 + 1}", Port = 80, Protocol = Wire.Protocol.Tcp },
                    Config = new Wire.VirtualService.Types.Config { Scheduler = "mh", Flags = { "mh-port" } },
                }, cancellationToken: ct);
            var next = -1;
            var daemonCpu0 = c.DaemonPid is { } dp ? CpuSeconds(dp) : double.NaN;
            var own0 = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
            var sw = Stopwatch.StartNew();
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < o.CeilingCalls && sw.Elapsed < TimeSpan.FromMinutes(5))
                    await c.Merlin.CreateServerAsync(new Wire.RealServer
                    {
                        ServiceID = $"ceiling-{offset + i / perService}",
                        Key = new Wire.RealServer.Types.Key { Ip = Cluster.NodeIp(i % perService), Port = 80 },
                        Config = new Wire.RealServer.Types.Config { Weight = 1, Forward = Wire.ForwardMethod.Route },
                    }, deadline: DateTime.UtcNow.AddSeconds(60), cancellationToken: ct);
            }));
            var calls = Math.Min(next, o.CeilingCalls);
            var rate = calls / sw.Elapsed.TotalSeconds;
            var daemonCpu = c.DaemonPid is { } dp2 ? CpuSeconds(dp2) - daemonCpu0 : double.NaN;
            var own = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - own0;
            r.Values[$"create_server_per_s_c{concurrency}"] = Math.Round(rate);
            r.Values[$"daemon_cpu_ms_per_call_c{concurrency}"] = Math.Round(daemonCpu * 1000 / calls, 2);
            r.Rows.Add(new($"CreateServer straight to the daemon, {concurrency} concurrent ({calls:N0} calls, {perService} per service)",
                $"{F(rate)}/s; CPU per call: daemon {F(daemonCpu * 1000 / calls, 2)} ms, client {F(own * 1000 / calls, 2)} ms → 100,000 servers ≥ {F(100_000 / rate, 0)} s"));
            Log(r.Name, $"{concurrency} concurrent: {F(rate)}/s");
            offset += services;
        }
    }
}
