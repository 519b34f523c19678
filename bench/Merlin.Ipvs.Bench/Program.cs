using System.Diagnostics;
using System.Globalization;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Ipvs;
using Merlin.Reconciler;
using Merlin.Store.Protobuf;
using Merlin.Store.Sqlite;
using Merlin.Contracts;
using Microsoft.Extensions.Logging.Abstractions;

// IPVS sync benchmark. Two steps, because the kernel with IPVS is in the qemu guest and seeding a store
// under emulation would take most of the run:
//   seed (on the host):  Merlin.Ipvs.Bench seed  --store FILE [--services 10000] [--servers 10] [--scheduler rr]
//   run  (in the guest): Merlin.Ipvs.Bench run   --store FILE [--no-change-passes 5] [--out DIR]
// `run` renders the store's contents as an ipvsadm-restore file and, each in a fresh network namespace
// (the kernel keeps deleted destinations in a per-namespace trash list that slows later adds), times
// ipvsadm-restore of it and one reconcile pass of the daemon's own reconciler (SQLite read, desired state,
// IPVS read, plan, batched netlink apply) from an empty table; then no-change passes, and a whole-table
// read as a restarted daemon makes. Results go to stdout as a Markdown table (and --out DIR/ipvs-bench.md).
// tests/vm/ipvs-bench wraps both steps.
if (args.Length == 0 || args[0] is not ("seed" or "run")) return Usage();
var o = Options.Parse(args[1..]);
return args[0] == "seed" ? await Seed(o) : await Run(o);

static int Usage()
{
    Console.Error.WriteLine("usage: Merlin.Ipvs.Bench seed --store FILE [--services N] [--servers M] [--scheduler S] | run --store FILE [--no-change-passes K] [--out DIR]");
    return 2;
}

static async Task<int> Seed(Options o)
{
    if (File.Exists(o.Store)) File.Delete(o.Store);
    await using var store = new SqliteStore(o.Store);
    var sw = Stopwatch.StartNew();
    var gate = new SemaphoreSlim(32);
    var tasks = new List<Task>();
    for (var i = 0; i < o.Services; i++)
    {
        var id = $"svc{i}";
        var vip = $"198.18.{i / 250}.{i % 250 + 1}";
        await gate.WaitAsync();
        tasks.Add(Task.Run(async () =>
        {
            try
            {
                await store.CreateServiceAsync(StoredRecords.Of(new VirtualService
                {
                    Id = id,
                    Key = new VirtualService.Types.Key { Ip = vip, Port = 80, Protocol = Protocol.Tcp },
                    Config = new VirtualService.Types.Config { Scheduler = o.Scheduler },
                }));
                for (var j = 0; j < o.Servers; j++)
                {
                    await store.CreateServerAsync(StoredRecords.Of(new RealServer
                    {
                        ServiceID = id,
                        Key = new RealServer.Types.Key { Ip = $"198.19.{j / 250}.{j % 250 + 1}", Port = 80 },
                        Config = new RealServer.Types.Config { Weight = 1, Forward = ForwardMethod.Route },
                        HealthCheck = new RealServer.Types.HealthCheck(),
                    }));
                }
            }
            finally
            {
                gate.Release();
            }
        }));
        if ((i + 1) % 1000 == 0) Console.Error.WriteLine($"seeded {i + 1}/{o.Services} services ({sw.Elapsed.TotalSeconds:0} s)");
    }
    await Task.WhenAll(tasks);
    Console.Error.WriteLine($"seeded {o.Services} services x {o.Servers} servers into {o.Store} in {sw.Elapsed.TotalSeconds:0.0} s");
    return 0;
}

static async Task<int> Run(Options o)
{
    await using var store = new SqliteStore(o.Store);
    var snapshot = await store.ListAsync();
    var (desired, rejected) = DesiredState.From(snapshot);
    if (rejected.Count > 0) throw new InvalidOperationException($"store has records that cannot be programmed: {rejected[0]}");
    var services = desired.Services.Count;
    var servers = desired.ServerCount;
    Console.Error.WriteLine($"store: {services} services, {servers} servers");

    var restoreFile = Path.Combine(Path.GetTempPath(), $"merlin-ipvs-bench-{Guid.NewGuid():N}.restore");
    await File.WriteAllTextAsync(restoreFile, RestoreText(desired));
    var rows = new List<(string What, string Value)>();
    try
    {
        // The reference: ipvsadm-restore of the same set into a fresh namespace.
        double restoreSeconds;
        using (var ns = new Namespace("ref"))
        {
            var sw = Stopwatch.StartNew();
            Sh($"ip netns exec {ns.Name} ipvsadm-restore < {restoreFile}");
            restoreSeconds = sw.Elapsed.TotalSeconds;
            var count = Sh($"ip netns exec {ns.Name} ipvsadm -Sn | grep -c '^-a'").Trim();
            Console.Error.WriteLine($"ipvsadm-restore: {restoreSeconds:0.00} s ({count} servers in the table)");
        }

        using var ours = new Namespace("merlin");
        var status = new ReconcilerStatus(TimeProvider.System);
        var options = new IpvsDataplaneOptions { NetworkNamespace = ours.Name, AuditServicesPerPass = o.Audit };
        using var dataplane = new IpvsDataplane(options, NullLogger<IpvsDataplane>.Instance);
        var reconciler = new Merlin.Reconciler.ReconcilePass(store, dataplane, status, NullLogger<Merlin.Reconciler.ReconcilePass>.Instance, TimeProvider.System);

        var first = await reconciler.RunPassAsync(CancellationToken.None);
        if (!first.Converged || first.Applied != services + servers)
            throw new InvalidOperationException($"first pass: {first.Applied} applied, {first.Failed} failed, expected {services + servers}");
        Console.Error.WriteLine($"merlin sync: {first.Duration.TotalSeconds:0.00} s ({first.Applied} operations)");

        var noChange = new List<double>();
        for (var i = 0; i < o.NoChangePasses; i++)
        {
            var pass = await reconciler.RunPassAsync(CancellationToken.None);
            if (pass.Planned != 0) throw new InvalidOperationException($"no-change pass {i} planned {pass.Planned} operations");
            noChange.Add(pass.Duration.TotalMilliseconds);
        }
        // The dataplane's own part of a no-change pass (audit read + plan), without the store read.
        var dataplaneOnly = new List<double>();
        for (var i = 0; i < o.NoChangePasses; i++)
        {
            var sw = Stopwatch.StartNew();
            var actual = await dataplane.ReadAsync(desired, CancellationToken.None);
            if (Planner.Plan(desired, actual).Count != 0) throw new InvalidOperationException("the kernel drifted during the benchmark");
            dataplaneOnly.Add(sw.Elapsed.TotalMilliseconds);
        }
        // What a restarted daemon does once: read every owned service and its servers.
        double wholeRead;
        using (var restarted = new IpvsDataplane(options, NullLogger<IpvsDataplane>.Instance))
        {
            var sw = Stopwatch.StartNew();
            var actual = await restarted.ReadAsync(desired, CancellationToken.None);
            wholeRead = sw.Elapsed.TotalSeconds;
            if (Planner.Plan(desired, actual).Count != 0) throw new InvalidOperationException("a whole read disagrees with the desired state");
        }

        rows.Add(("table", $"{services:N0} services × {servers / Math.Max(services, 1)} servers ({servers:N0} destinations), scheduler {desired.Services.Values.First().Config.Scheduler}"));
        rows.Add(("ipvsadm-restore from empty", $"{restoreSeconds:0.00} s"));
        rows.Add(("merlin reconcile pass from empty (store read + plan + IPVS apply)", $"{first.Duration.TotalSeconds:0.00} s"));
        rows.Add(("ratio merlin / ipvsadm-restore", (first.Duration.TotalSeconds / restoreSeconds).ToString("0.00", CultureInfo.InvariantCulture)));
        rows.Add(($"no-change resync, median of {o.NoChangePasses} (store revision check + audit + plan)", $"{Median(noChange):0} ms"));
        rows.Add(($"dataplane audit + a full plan (the reconciler skips the plan when nothing changed), median of {o.NoChangePasses}", $"{Median(dataplaneOnly):0} ms, {dataplane.LastAudit} services audited per pass (a full round every {Math.Ceiling(services / (double)Math.Max(1, dataplane.LastAudit)):0} passes)"));
        rows.Add(("whole-table read after a restart", $"{wholeRead:0.00} s"));
    }
    finally
    {
        File.Delete(restoreFile);
    }

    var table = "| measure | value |\n|---|---|\n" + string.Join("\n", rows.Select(r => $"| {r.What} | {r.Value} |")) + "\n";
    Console.WriteLine(table);
    if (o.Out is { } dir)
    {
        Directory.CreateDirectory(dir);
        await File.WriteAllTextAsync(Path.Combine(dir, "ipvs-bench.md"), table);
    }
    return 0;
}

static double Median(List<double> values)
{
    var sorted = values.Order().ToList();
    return sorted.Count == 0 ? double.NaN : sorted[sorted.Count / 2];
}

static string RestoreText(DataplaneState desired)
{
    var text = new System.Text.StringBuilder();
    foreach (var s in desired.Services.Values)
    {
        var vip = $"{s.Key.Address}:{s.Key.Port}";
        text.Append("-A -t ").Append(vip).Append(" -s ").Append(s.Config.Scheduler).Append('\n');
        foreach (var (server, config) in s.Servers)
            text.Append("-a -t ").Append(vip).Append(" -r ").Append(server).Append(" -g -w ").Append(config.Weight).Append('\n');
    }
    return text.ToString();
}

static string Sh(string command)
{
    var start = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true };
    start.ArgumentList.Add("-c");
    start.ArgumentList.Add(command);
    using var p = Process.Start(start)!;
    var output = p.StandardOutput.ReadToEnd();
    var error = p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new InvalidOperationException($"{command}: exit {p.ExitCode}: {error}");
    return output;
}

/// <summary>A fresh network namespace with lo up, deleted on Dispose.</summary>
sealed class Namespace : IDisposable
{
    public Namespace(string label)
    {
        Name = $"mb-{label}-{Guid.NewGuid().ToString("N")[..8]}";
        Run($"ip netns add {Name}");
        Run($"ip -n {Name} link set lo up");
    }

    public string Name { get; }

    public void Dispose() => Run($"ip netns del {Name}");

    private static void Run(string command)
    {
        using var p = Process.Start("/bin/sh", ["-c", command]);
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{command}: exit {p.ExitCode}");
    }
}

sealed record Options(string Store, int Services, int Servers, string Scheduler, int NoChangePasses, int Audit, string? Out)
{
    public static Options Parse(string[] args)
    {
        string? Value(string name)
        {
            var i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
        }
        int Int(string name, int fallback) => Value(name) is { } v ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
        return new Options(
            Value("--store") ?? throw new ArgumentException("--store FILE is required"),
            Int("--services", 10_000),
            Int("--servers", 10),
            Value("--scheduler") ?? "rr",
            Int("--no-change-passes", 5),
            Int("--audit", new IpvsDataplaneOptions().AuditServicesPerPass),
            Value("--out"));
    }
}
