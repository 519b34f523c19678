using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Merlin.Kubernetes.Bench;
using Microsoft.Extensions.Logging;

// merlin-k8s benchmarks (issue 15, "Done when"): the controller (in this process, as ControllerHost) against the
// Kubernetes API test server (in this process, Kestrel on 127.0.0.1) and the real merlin daemon (its own process by
// default: dotnet merlin.dll, SQLite store, --dataplane none, 127.0.0.1). Nodes are 127.0.x.y, so no health check
// leaves the machine. Every scenario starts a fresh cluster and tears it down (child processes by PID, temp dirs).
//
// Usage: dotnet run -c Release --project bench/Merlin.Kubernetes.Bench -- [--quick] [--scenarios latency,sync,churn,failover]
//        [--output table|json] [--workers 4] [--daemon process|inproc]
//        [--services 200] [--rate 10] [--latency-nodes 10] [--latency-background 0]
//        [--sync-services 1000] [--sync-nodes 100] [--no-controller-process] [--controller-env KEY=VALUE[,KEY=VALUE] ...]
//        [--churn-services 100] [--churn-nodes 10] [--churn-rate 1000] [--churn-seconds 10]
//        [--failover-runs 3] [--failover-services 100] [--failover-nodes 10] [--lease-seconds 12] [--failover-graceful]
//        (not in the default set) --scenarios ceiling [--ceiling-calls 20000] [--ceiling-concurrency 16,64]: the daemon's own
//        CreateServer rate without the controller, the floor under the first full sync
var o = BenchArgs.Parse(args);
using var logs = LoggerFactory.Create(b => b.AddSimpleConsole(c => { c.SingleLine = true; c.TimestampFormat = "HH:mm:ss.fff "; })
    .AddFilter((category, level) => level >= (o.Verbose ? LogLevel.Information : LogLevel.Warning)));
// Progress goes to stderr; stdout holds only the table or the JSON.
Console.SetError(new StreamWriter(Console.OpenStandardError()) { AutoFlush = true });
using var cts = new CancellationTokenSource(o.Quick ? TimeSpan.FromMinutes(3) : TimeSpan.FromMinutes(60));
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
var ct = cts.Token;

var started = DateTime.UtcNow;
var results = new List<ScenarioResult>();
Log($"merlin-k8s bench: {(o.Quick ? "quick" : "full")} run of {string.Join(",", o.Scenarios)}; {Environment.ProcessorCount} cores; load {Util.LoadAverage()}; daemon {o.Daemon}; {o.Workers} workers");
foreach (var name in o.Scenarios)
{
    var load0 = Util.LoadAverage();
    var sw = Stopwatch.StartNew();
    var result = new ScenarioResult(name) { LoadBefore = load0 };
    try
    {
        await (name switch
        {
            "latency" => Scenarios.LatencyAsync(o, result, logs, ct),
            "sync" => Scenarios.SyncAsync(o, result, logs, ct),
            "churn" => Scenarios.ChurnAsync(o, result, logs, ct),
            "failover" => Scenarios.FailoverAsync(o, result, logs, ct),
            "ceiling" => Scenarios.CeilingAsync(o, result, logs, ct),
            _ => throw new ArgumentException($"--scenarios: unknown scenario {name}"),
        });
    }
    catch (Exception e) when (e is not ArgumentException)
    {
        result.Error = $"{e.GetType().Name}: {e.Message}";
        Log($"[{name}] failed: {e}");
    }
    result.LoadAfter = Util.LoadAverage();
    result.Seconds = Math.Round(sw.Elapsed.TotalSeconds, 1);
    results.Add(result);
    Log($"[{name}] done in {sw.Elapsed.TotalSeconds:N1} s; load {result.LoadBefore} → {result.LoadAfter}");
}

if (o.Output == "json")
{
    var doc = new
    {
        started = started.ToString("O", CultureInfo.InvariantCulture),
        cores = Environment.ProcessorCount,
        quick = o.Quick,
        daemon = o.Daemon,
        workers = o.Workers,
        args,
        scenarios = results.Select(r => new { r.Name, r.LoadBefore, r.LoadAfter, r.Seconds, r.Error, r.Values, rows = r.Rows.Select(x => new { x.Measure, x.Value, x.Goal, x.Met }) }),
    };
    Console.WriteLine(JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
}
else
{
    Console.WriteLine();
    Console.WriteLine("| scenario | measure | value | goal |");
    Console.WriteLine("|---|---|---|---|");
    foreach (var r in results)
    {
        foreach (var row in r.Rows)
            Console.WriteLine($"| {r.Name} | {row.Measure} | {row.Value} | {(row.Goal is null ? "" : $"{row.Goal}: {(row.Met == true ? "met" : "**missed**")}")} |");
        Console.WriteLine($"| {r.Name} | load average before → after ({r.Seconds:N0} s) | {r.LoadBefore} → {r.LoadAfter} | |");
        if (r.Error is not null) Console.WriteLine($"| {r.Name} | **failed** | {r.Error} | |");
    }
}
return results.Any(r => r.Error is not null) ? 1 : 0;

static void Log(string line) => Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {line}");

public sealed record Row(string Measure, string Value, string? Goal = null, bool? Met = null);

public sealed class ScenarioResult(string name)
{
    public string Name { get; } = name;
    public string LoadBefore { get; set; } = "";
    public string LoadAfter { get; set; } = "";
    public double Seconds { get; set; }
    public string? Error { get; set; }
    public List<Row> Rows { get; } = [];
    public SortedDictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);
}

public sealed record BenchArgs
{
    public bool Quick { get; init; }
    public bool Verbose { get; init; }
    public string Output { get; init; } = "table";
    public string Daemon { get; init; } = "process";
    public IReadOnlyList<string> Scenarios { get; init; } = ["latency", "sync", "churn", "failover"];
    public int Workers { get; init; } = 4;
    public int Services { get; init; } = 200;
    public double Rate { get; init; } = 10;
    public int LatencyNodes { get; init; } = 10;
    public int LatencyBackground { get; init; }
    public int SyncServices { get; init; } = 1000;
    public int SyncNodes { get; init; } = 100;
    public bool ControllerProcess { get; init; } = true;
    /// <summary>Environments the merlin-k8s child process is run with, one takeover each (--controller-env KEY=VALUE[,KEY=VALUE],
    /// repeatable; "default" for none), e.g. DOTNET_gcServer=0. Without the flag: once, with the default environment.</summary>
    public IReadOnlyList<IReadOnlyDictionary<string, string>> ControllerEnvs { get; init; } = [new Dictionary<string, string>()];
    public int ChurnServices { get; init; } = 100;
    public int ChurnNodes { get; init; } = 10;
    public int ChurnRate { get; init; } = 1000;
    public double ChurnSeconds { get; init; } = 10;
    public int FailoverRuns { get; init; } = 3;
    public int FailoverServices { get; init; } = 100;
    public int FailoverNodes { get; init; } = 10;
    /// <summary>The failover scenario's lease: 12 s is the default LeaseOptions (renew 8 s, retry 2 s); --quick uses 5 s (renew 4 s, retry 1 s).</summary>
    public int LeaseSeconds { get; init; } = 12;
    /// <summary>Stop the leader as SIGTERM does (it hands the lease back) instead of as a crash.</summary>
    public bool FailoverGraceful { get; init; }
    public int CeilingCalls { get; init; } = 20_000;
    public IReadOnlyList<int> CeilingConcurrency { get; init; } = [16, 64];

    public static BenchArgs Parse(string[] a)
    {
        var quick = a.Contains("--quick");
        // --quick: every scenario at smoke size, the whole run in under a minute.
        var o = quick
            ? new BenchArgs { Quick = true, Services = 50, Rate = 25, LatencyNodes = 5, SyncServices = 50, SyncNodes = 10, ChurnServices = 20, ChurnNodes = 5, ChurnSeconds = 2, FailoverRuns = 1, FailoverServices = 20, FailoverNodes = 5, LeaseSeconds = 5, CeilingCalls = 2000 }
            : new BenchArgs();
        string? Get(string name) => Array.IndexOf(a, name) is var i && i >= 0 ? (i + 1 < a.Length ? a[i + 1] : throw new ArgumentException($"{name} needs a value")) : null;
        int Int(string name, int fallback, int min, int max) =>
            Get(name) is { } v ? int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max ? n : throw new ArgumentException($"{name}: {v} is not a whole number from {min} to {max}") : fallback;
        double Dbl(string name, double fallback, double min, double max) =>
            Get(name) is { } v ? double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max ? n : throw new ArgumentException($"{name}: {v} is not a number from {min} to {max}") : fallback;
        var output = Get("--output") ?? "table";
        if (output is not ("table" or "json")) throw new ArgumentException("--output: table or json");
        var daemon = Get("--daemon") ?? "process";
        if (daemon is not ("process" or "inproc")) throw new ArgumentException("--daemon: process or inproc");
        return o with
        {
            Verbose = a.Contains("--verbose"),
            Output = output,
            Daemon = daemon,
            Scenarios = Get("--scenarios")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? o.Scenarios,
            Workers = Int("--workers", o.Workers, 1, 64),
            Services = Int("--services", o.Services, 1, 4000),
            Rate = Dbl("--rate", o.Rate, 0, 1000),
            LatencyNodes = Int("--latency-nodes", o.LatencyNodes, 1, 1000),
            LatencyBackground = Int("--latency-background", o.LatencyBackground, 0, 3000),
            SyncServices = Int("--sync-services", o.SyncServices, 1, 4000),
            SyncNodes = Int("--sync-nodes", o.SyncNodes, 1, 1000),
            ControllerProcess = !a.Contains("--no-controller-process"),
            ControllerEnvs = a.Select((x, i) => (x, i)).Where(p => p.x == "--controller-env" && p.i + 1 < a.Length)
                .Select(p => (IReadOnlyDictionary<string, string>)a[p.i + 1].Split(',', StringSplitOptions.RemoveEmptyEntries).Where(kv => kv != "default")
                    .Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv.Length > 1 ? kv[1] : ""))
                .ToList() is { Count: > 0 } envs ? envs : o.ControllerEnvs,
            ChurnServices = Int("--churn-services", o.ChurnServices, 1, 250),
            ChurnNodes = Int("--churn-nodes", o.ChurnNodes, 1, 250),
            ChurnRate = Int("--churn-rate", o.ChurnRate, 1, 20000),
            ChurnSeconds = Dbl("--churn-seconds", o.ChurnSeconds, 0.1, 120),
            FailoverRuns = Int("--failover-runs", o.FailoverRuns, 1, 20),
            FailoverServices = Int("--failover-services", o.FailoverServices, 1, 4000),
            FailoverNodes = Int("--failover-nodes", o.FailoverNodes, 1, 1000),
            LeaseSeconds = Int("--lease-seconds", o.LeaseSeconds, 3, 60),
            FailoverGraceful = a.Contains("--failover-graceful"),
            CeilingCalls = Int("--ceiling-calls", o.CeilingCalls, 100, 1_000_000),
            CeilingConcurrency = Get("--ceiling-concurrency")?.Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToList() ?? o.CeilingConcurrency,
        };
    }
}
