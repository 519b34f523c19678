using System.Diagnostics;
using System.Globalization;
using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Nftables.Bench;
using Merlin.Reconciler;
using Merlin.Store.Protobuf;
using Merlin.Store.Sqlite;
using Merlin.Contracts;
using Microsoft.Extensions.Logging.Abstractions;

// The nftables dataplane at scale on the real kernel. Every measurement runs in fresh network
// namespaces made here (names mnb<pid>-<n>-…, deleted afterwards, also on failure), never in the root
// namespace. For each case the desired state is put in a SQLite store once; then, per run:
//   ours: a fresh LB namespace (eth0, its real servers answering ARP in a second namespace), a fresh
//         dataplane, and one reconcile pass as the daemon runs it (store read, desired state, dataplane
//         read, plan, apply), timed step by step, with the kernel memory it took;
//   nft:  another fresh namespace with an eth0, and `nft -f` of the very scripts our pass ran, with
//         the maps our pass made over netlink (staged) written into them as nft commands: the same
//         change, all of it through nft.
// Usage (root): dotnet run -c Release --project bench/Merlin.Nftables.Bench -- [--services 1000]
//        [--servers 10] [--runs 3] [--cases distinct,shared,unique] [--weight-changes 5] [--writer lib|cli] [--stage yes|no] [--table maglev|md]
// --table md makes every service an md-table service (-b mh-port,md-table: its table computed by the API's deriver
// as the store is filled, and stored), to compare its maps and kernel memory with Maglev's;
// --writer cli makes the dataplane write through the nft CLI instead of libnftables (for comparison);
// --stage no makes it write new maps through nft too (NftablesOptions.StageMaps = false).
if (args.Contains("--help"))
{
    Console.WriteLine("usage: Merlin.Nftables.Bench [--services 1000] [--servers 10] [--runs 3] [--cases distinct,shared,unique] [--weight-changes 5] [--writer lib|cli] [--stage yes|no] [--table maglev|md]");
    Console.WriteLine("       Merlin.Nftables.Bench --profile-layout [--cases distinct|shared|unique] [--services 1000] [--servers 10] [--weight-changes N]   (layout build and render, no kernel; N changes in a row: each phase's p50/p90)");
    Console.WriteLine("       Merlin.Nftables.Bench --profile-maglev [N] [--builds 50] [--katran PATH]   (one DSR map of N servers (1000) at Merlin's M: time and gen-2 collections per build)");
    Console.WriteLine("       Merlin.Nftables.Bench --profile-sweep [0,10000,100000,262144] [--runs 3]   (root: a server removed while the flow map holds that many pins)");
    return 0;
}
if (args.Contains("--profile-maglev"))
{
    string? Value(string flag) => Array.IndexOf(args, flag) is var at and >= 0 && at + 1 < args.Length ? args[at + 1] : null;
    var rest = args.SkipWhile(a => a != "--profile-maglev").Skip(1).FirstOrDefault();
    int n = rest is not null && int.TryParse(rest, CultureInfo.InvariantCulture, out var parsed) ? parsed : 1000;
    return MaglevMapProfile.Run(n, int.Parse(Value("--builds") ?? "50", CultureInfo.InvariantCulture), Value("--katran"));
}
if (args.Contains("--profile-sweep"))
{
    if (!Environment.IsPrivilegedProcess) { Console.Error.WriteLine("Merlin.Nftables.Bench --profile-sweep: run as root"); return 2; }
    var rest = args.SkipWhile(a => a != "--profile-sweep").Skip(1).FirstOrDefault(a => !a.StartsWith("--", StringComparison.Ordinal)) ?? "0,10000,100000,262144";
    var runsAt = Array.IndexOf(args, "--runs");
    return await PinSweepProfile.RunAsync(rest.Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToList(),
        runsAt >= 0 ? int.Parse(args[runsAt + 1], CultureInfo.InvariantCulture) : 3);
}
if (args.Contains("--profile-layout"))
{
    var p = BenchArgs.Parse(args.Where(a => a != "--profile-layout").ToArray());
    LayoutProfile.Run(p.Services, p.Servers, p.Cases[0], args.Contains("--weight-changes") ? p.WeightChanges : 0);
    return 0;
}
if (!Environment.IsPrivilegedProcess)
{
    Console.Error.WriteLine("Merlin.Nftables.Bench: run as root (it makes network namespaces and programs nftables in them)");
    return 2;
}
var o = BenchArgs.Parse(args);
var rows = new List<string>();
using var temp = new TempFolder();
Console.WriteLine($"nft {Shell.Run("nft", ["--version"]).Trim()}, kernel {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}, load {File.ReadAllText("/proc/loadavg").Trim()}");
foreach (var kind in o.Cases)
{
    var services = Workload.Services(kind, o.Services, o.Servers, o.MdTable);
    var storePath = Path.Combine(temp.Path, $"{kind}.db");
    await using var store = new SqliteStore(storePath, o.MdTable ? new SqliteStoreOptions { DeriveTable = Merlin.Api.LookupTables.Deriver(TimeProvider.System, Merlin.Api.LookupTables.DefaultWindow) } : null);
    var clock = Stopwatch.StartNew();
    await Workload.FillAsync(store, services);
    Console.WriteLine($"[{kind}] store filled with {services.Count:N0} services × {o.Servers} servers ({(o.MdTable ? "md-table" : "Maglev")}) in {clock.Elapsed.TotalSeconds:0.0} s");
    // NAT servers are never resolved (nor reached: the benchmark sends no traffic).
    var servers = kind == "unique" ? [] : services.SelectMany(s => s.Servers).Select(s => IPAddress.Parse(s.Key.Ip)).Distinct().ToList();

    for (var run = 1; run <= o.Runs; run++)
    {
        // ---- ours ----
        Measured first;
        var scripts = new List<string>();
        var changes = new List<Measured>();
        Measured? noChange = null;
        using (var net = BenchNet.Create(servers))
        {
            await net.ResolveAsync(servers);
            using var nft = new RecordingNftables(net.Lb, o.Cli);
            if (run == 1) Console.WriteLine($"[{kind}] writer: {nft.Writer}");
            var dataplane = Workload.Dataplane(net.Lb, nft, o.Stage);
            var before = KernelMemory.Read();
            first = await Pass.RunAsync(store, dataplane, nft);
            var after = KernelMemory.Read();
            first = first with { KernelMiB = KernelMemory.DeltaMiB(before, after), Script = nft.TakeScripts(), Phases = dataplane.Phases.Take() };
            var rssFirst = ProcessMemory.Text();
            scripts.AddRange(first.Script);
            dataplane.Phases.Take();
            noChange = await Pass.RunAsync(store, dataplane, nft);
            noChange = noChange with { Phases = dataplane.Phases.Take() };
            nft.TakeScripts();
            for (var w = 0; w < o.WeightChanges; w++)
            {
                await Workload.ChangeWeightAsync(store, kind, services, w % 2 == 0 ? 2u : 1u);
                dataplane.Phases.Take();
                var change = await Pass.RunAsync(store, dataplane, nft);
                changes.Add(change with { Script = nft.TakeScripts(), Phases = dataplane.Phases.Take() });
            }
            Console.WriteLine($"[{kind} run {run}] process memory after the first pass: {rssFirst}; after the changes: {ProcessMemory.Text()}");
        }
        await Task.Delay(2000);   // let the namespace's teardown free its memory before the next measurement

        // ---- nft -f of the same scripts ----
        double nftSeconds = 0;
        double nftMiB;
        using (var net = BenchNet.Create([]))
        {
            var before = KernelMemory.Read();
            foreach (var script in scripts)
            {
                var file = Path.Combine(temp.Path, "ruleset.nft");
                File.WriteAllText(file, script);
                var sw = Stopwatch.StartNew();
                Shell.Run("ip", ["netns", "exec", net.Lb, "nft", "-f", file]);
                nftSeconds += sw.Elapsed.TotalSeconds;
            }
            nftMiB = KernelMemory.DeltaMiB(before, KernelMemory.Read());
        }
        await Task.Delay(2000);

        var lines = scripts.Sum(s => s.Count(c => c == '\n'));
        var bytes = scripts.Sum(s => (long)s.Length);
        Console.WriteLine($"[{kind} run {run}] ours: pass {first.Total:0.000} s (store {first.Store:0.000}, desired {first.Desired:0.000}, dataplane read {first.Read:0.000}, plan {first.Plan:0.000}, apply {first.Apply:0.000} of which writes (staged maps + nft) {first.Nft:0.000}), {first.Operations:N0} operations, {scripts.Count} transaction(s) of {lines:N0} lines / {bytes / 1048576.0:0.0} MiB, kernel +{first.KernelMiB:0} MiB");
        Console.WriteLine($"[{kind} run {run}] ours, dataplane phases: {first.PhaseText}");
        Console.WriteLine($"[{kind} run {run}] nft -f of the same script(s): {nftSeconds:0.000} s, kernel +{nftMiB:0} MiB; ratio pass/nft {first.Total / nftSeconds:0.00}, dataplane/nft {first.DataplaneTotal / nftSeconds:0.00}");
        Console.WriteLine($"[{kind} run {run}] no-change pass: {noChange!.Total * 1000:0} ms (dataplane read {noChange.Read * 1000:0} ms; {noChange.PhaseText})");
        foreach (var c in changes)
            Console.WriteLine($"[{kind} run {run}] weight change ({c.Operations} operations): pass {c.Total * 1000:0} ms, dataplane read+plan+apply {c.DataplaneTotal * 1000:0} ms (apply {c.Apply * 1000:0} ms, nft {c.Nft * 1000:0} ms), script {c.Script.Sum(s => s.Count(ch => ch == '\n'))} lines; {c.PhaseText}");
        var median = changes.Count == 0 ? double.NaN : changes.Select(c => c.DataplaneTotal).Order().ElementAt(changes.Count / 2);
        rows.Add(string.Create(CultureInfo.InvariantCulture,
            $"| {kind} | {run} | {first.Total:0.00} s | {first.DataplaneTotal:0.00} s | {nftSeconds:0.00} s | {first.Total / nftSeconds:0.00} | {first.DataplaneTotal / nftSeconds:0.00} | {first.KernelMiB:0} MiB | {nftMiB:0} MiB | {noChange.Total * 1000:0} ms | {median * 1000:0} ms |"));
    }
}
Console.WriteLine();
Console.WriteLine("| servers | run | our pass | of it dataplane | nft -f same script | pass / nft | dataplane / nft | kernel memory (ours) | kernel memory (nft -f) | no-change pass | weight change (dataplane, median) |");
Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
foreach (var row in rows) Console.WriteLine(row);
return 0;

namespace Merlin.Nftables.Bench
{
    internal sealed record BenchArgs(int Services, int Servers, int Runs, IReadOnlyList<string> Cases, int WeightChanges, bool Cli, bool Stage = true, bool MdTable = false)
    {
        public static BenchArgs Parse(string[] a)
        {
            string Get(string name, string fallback) => Array.IndexOf(a, name) is var i && i >= 0 && i + 1 < a.Length ? a[i + 1] : fallback;
            var cases = Get("--cases", "distinct,shared").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (cases.Any(c => c is not ("distinct" or "shared" or "unique"))) throw new ArgumentException("--cases: distinct, shared and/or unique");
            return new BenchArgs(int.Parse(Get("--services", "1000"), CultureInfo.InvariantCulture), int.Parse(Get("--servers", "10"), CultureInfo.InvariantCulture),
                int.Parse(Get("--runs", "3"), CultureInfo.InvariantCulture), cases, int.Parse(Get("--weight-changes", "5"), CultureInfo.InvariantCulture),
                Get("--writer", "lib") switch { "lib" => false, "cli" => true, var w => throw new ArgumentException($"--writer {w}: lib or cli") },
                Get("--stage", "yes") switch { "yes" => true, "no" => false, var v => throw new ArgumentException($"--stage {v}: yes or no") },
                Get("--table", "maglev") switch { "maglev" => false, "md" => true, var t => throw new ArgumentException($"--table {t}: maglev or md") });
        }
    }

    /// <summary>One reconcile pass, as <c>ReconcilePass.RunPassAsync</c> runs it, timed step by step (seconds).</summary>
    internal sealed record Measured(double Store, double Desired, double Read, double Plan, double Apply, double Nft, int Operations)
    {
        public double KernelMiB { get; init; }
        public IReadOnlyList<string> Script { get; init; } = [];
        public IReadOnlyDictionary<string, double> Phases { get; init; } = new Dictionary<string, double>();
        public string PhaseText => string.Join(", ", Phases.Select(p => $"{p.Key} {p.Value:0} ms"));
        public double Total => Store + Desired + Read + Plan + Apply;
        public double DataplaneTotal => Read + Plan + Apply;
    }

    internal static class Pass
    {
        public static async Task<Measured> RunAsync(SqliteStore store, NftablesDataplane dataplane, RecordingNftables nft)
        {
            var nftBefore = nft.Seconds;
            var sw = Stopwatch.StartNew();
            var snapshot = await store.ListAsync();
            var tStore = Lap(sw);
            // As the daemon does for nftables: md-table services get their stored table.
            var (desired, rejected, _) = DesiredState.Build(snapshot, withTables: true);
            if (rejected.Count > 0) throw new InvalidOperationException($"rejected: {rejected[0]}");
            var tDesired = Lap(sw);
            var actual = await dataplane.ReadAsync(CancellationToken.None);
            var tRead = Lap(sw);
            var plan = Planner.Plan(desired, actual);
            var tPlan = Lap(sw);
            if (plan.Count > 0)
            {
                var errors = await dataplane.ApplyAsync(plan, CancellationToken.None);
                if (errors.FirstOrDefault(e => e is not null) is { } error) throw new InvalidOperationException($"apply failed: {error.Message}");
            }
            var tApply = Lap(sw);
            if (dataplane.Issues.Count > 0) throw new InvalidOperationException($"{dataplane.Issues.Count} issues, e.g. {dataplane.Issues[0]}");
            return new Measured(tStore, tDesired, tRead, tPlan, tApply, nft.Seconds - nftBefore, plan.Count);
        }

        private static double Lap(Stopwatch sw)
        {
            var s = sw.Elapsed.TotalSeconds;
            sw.Restart();
            return s;
        }
    }

    internal static class Workload
    {
        public const uint Seed = 0x5eed1234;

        /// <summary>
        /// distinct: every service has another set of ten real servers, so every service has its own
        /// Maglev map; shared: every service has the same ten (one map); unique: no server in two services, NAT (masq:
        /// nothing to resolve, so no neighbour table limit; --profile-layout makes them route servers all the same).
        /// VIPs 198.18.4.1 …, real servers 198.19.0.1 …, all DSR on port 80.
        /// </summary>
        public static List<(VirtualService Service, List<RealServer> Servers)> Services(string kind, int count, int perService, bool mdTable = false)
        {
            var list = new List<(VirtualService, List<RealServer>)>(count);
            for (var i = 0; i < count; i++)
            {
                var service = new VirtualService
                {
                    Id = $"svc-{i}",
                    Key = new VirtualService.Types.Key { Ip = Address(18, 4 * 250 + i), Port = 80, Protocol = Protocol.Tcp },
                    Config = new VirtualService.Types.Config { Scheduler = "mh", Flags = { "mh-port" } },
                };
                if (mdTable) service.Config.Flags.Add("md-table");
                var servers = Enumerable.Range(0, perService).Select(j => new RealServer
                {
                    ServiceID = service.Id,
                    Key = new RealServer.Types.Key { Ip = kind == "unique" ? Own(i * perService + j) : Address(19, kind == "shared" ? j : Pooled(i, j)), Port = 80 },
                    Config = new RealServer.Types.Config { Weight = 1, Forward = kind == "unique" ? ForwardMethod.Masq : ForwardMethod.Route },
                }).ToList();
                list.Add((service, servers));
            }
            if (kind == "distinct" && list.Select(s => string.Join(",", s.Item2.Select(r => r.Key.Ip).Order())).Distinct().Count() != count)
                throw new InvalidOperationException("the distinct case's server sets are not all different");
            return list;
        }

        /// <summary>
        /// Real servers come from a pool of <see cref="Pool"/> addresses: the kernel's neighbour table is
        /// one table for all namespaces, and it refuses entries (managed ones included) beyond
        /// net.ipv4.neigh.default.gc_thresh3 (1,024 by default). Service i has servers i + j·53 (the first
        /// half of the services) or i + j·37 (the second half), mod the pool: 1,000 different sets.
        /// </summary>
        public const int Pool = 500;

        private static int Pooled(int service, int j) => (service + j * (service < Pool ? 53 : 37)) % Pool;

        /// <summary>The n-th server of the unique case: 198.18.64.1 on (room for ~114,000; the VIPs end below 198.18.64.0).</summary>
        private static string Own(int n)
        {
            var a = (198u << 24 | 18u << 16 | 64u << 8) + 1 + (uint)n;
            return $"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}";
        }

        /// <summary>198.&lt;second&gt;.x.y for the n-th host: 250 per /24, starting at .1.</summary>
        private static string Address(int second, int n) => $"198.{second}.{n / 250}.{n % 250 + 1}";

        public static async Task FillAsync(SqliteStore store, List<(VirtualService Service, List<RealServer> Servers)> services)
        {
            await Concurrently(services.Select(s => (Func<Task>)(() => store.CreateServiceAsync(StoredRecords.Of(s.Service)))), 32);
            await Concurrently(services.SelectMany(s => s.Servers).Select(r => (Func<Task>)(() => store.CreateServerAsync(StoredRecords.Of(r)))), 32);
        }

        /// <summary>The weight of one real server changes: in every service for shared (the ingress node of all of them), in one service for distinct.</summary>
        public static async Task ChangeWeightAsync(SqliteStore store, string kind, List<(VirtualService Service, List<RealServer> Servers)> services, uint weight)
        {
            var targets = kind == "shared" ? services.Select(s => s.Servers[3]) : [services[0].Servers[3]];
            await Concurrently(targets.Select(r => (Func<Task>)(async () =>
            {
                var current = await store.GetServerAsync(r.ServiceID, r.Key.Ip, r.Key.Port) ?? throw new InvalidOperationException("server vanished");
                var updated = StoredRecords.Message(current.Value).Clone();
                updated.Config.Weight = weight;
                await store.UpdateServerAsync(StoredRecords.Of(updated), current.Version);
            })), 32);
        }

        public static NftablesDataplane Dataplane(string ns, RecordingNftables nft, bool stage)
        {
            var options = new NftablesOptions { HashSeed = Seed, Interface = "eth0", NetworkNamespace = ns, ResolveWait = TimeSpan.FromSeconds(5), StageMaps = stage };
            return new NftablesDataplane(options, nft, null, NullLogger.Instance, TimeProvider.System);
        }

        private static async Task Concurrently(IEnumerable<Func<Task>> calls, int concurrency)
        {
            using var e = calls.GetEnumerator();
            var gate = new object();
            async Task Worker()
            {
                while (true)
                {
                    Func<Task> call;
                    lock (gate)
                    {
                        if (!e.MoveNext()) return;
                        call = e.Current;
                    }
                    await call();
                }
            }
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(Worker)));
        }
    }

    /// <summary>
    /// The dataplane's writer (libnftables in the process unless --writer cli) in a namespace, keeping
    /// each script and the time nft took (with the script written into it as the dataplane does). A script is kept as the dataplane's script object and
    /// turned into text only when taken, after the clock stopped.
    /// </summary>
    internal sealed class RecordingNftables(string ns, bool cli) : INftables, IDisposable
    {
        /// <summary>Closes the writer's kept netlink sockets before the namespace is deleted.</summary>
        public void Dispose() => _inner.Dispose();

        private readonly NftKernel _inner = NftKernel.Open(Options(ns, cli), new ProcessRunner(ns, "ip"), NullLogger.Instance);

        private static NftablesOptions Options(string ns, bool cli)
        {
            var options = new NftablesOptions { HashSeed = Workload.Seed, NetworkNamespace = ns };
            return cli ? options with { LibNftables = null } : options;
        }

        /// <summary>The writer the dataplane gets by default (libnftables), or the nft CLI with --writer cli.</summary>
        public string Writer => _inner.Description;
        private readonly List<object> _scripts = [];

        public double Seconds { get; private set; }

        public List<string> TakeScripts()
        {
            // A script's staged maps written into it as nft commands: the whole change, as nft -f would be given it.
            var list = _scripts.Select(s => s is Merlin.Dataplane.Nftables.Layout.NftScript script ? script.ToString(withStaged: true) : s.ToString()!).ToList();
            _scripts.Clear();
            return list;
        }

        public async Task RunAsync(string script, CancellationToken ct)
        {
            _scripts.Add(script);
            var sw = Stopwatch.StartNew();
            try { await _inner.RunAsync(script, ct); }
            finally { Seconds += sw.Elapsed.TotalSeconds; }
        }

        public async Task RunAsync(Merlin.Dataplane.Nftables.Layout.NftScript script, CancellationToken ct)
        {
            _scripts.Add(script);
            var sw = Stopwatch.StartNew();
            try { await _inner.RunAsync(script, ct); }
            finally { Seconds += sw.Elapsed.TotalSeconds; }
        }

        public Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct) => _inner.ListSetJsonAsync(kind, family, table, name, ct);

        public bool CanStage => _inner.CanStage;

        /// <summary>Time spent making maps over netlink (also counted in <see cref="Seconds"/>).</summary>
        public double StageSeconds { get; private set; }

        public async Task<StageResult> StageAsync(IReadOnlyList<StagedSet> sets, CancellationToken ct)
        {
            var sw = Stopwatch.StartNew();
            try { return await _inner.StageAsync(sets, ct); }
            finally { Seconds += sw.Elapsed.TotalSeconds; StageSeconds += sw.Elapsed.TotalSeconds; }
        }

        public Task UnstageAsync(StageResult staging, IReadOnlyList<StagedSet> sets, CancellationToken ct) => _inner.UnstageAsync(staging, sets, ct);

        public Task<uint> GenerationAsync(CancellationToken ct) => _inner.GenerationAsync(ct);

        public Task<IReadOnlyList<SetElement>> ReadElementsAsync(string family, string table, string set, CancellationToken ct) => _inner.ReadElementsAsync(family, table, set, ct);

        public Task<int?> DeleteElementsAsync(string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone, CancellationToken ct) => _inner.DeleteElementsAsync(family, table, set, keys, evenIfGone, ct);

        public Task<IReadOnlyList<KernelTable>> ReadTablesAsync(IReadOnlyList<(string Family, string Name)> tables, CancellationToken ct) => _inner.ReadTablesAsync(tables, ct);

        public Task<KernelTable?> ReadTablePartsAsync(string family, string name, IReadOnlyCollection<string> chains, IReadOnlyCollection<string> sets, CancellationToken ct) =>
            _inner.ReadTablePartsAsync(family, name, chains, sets, ct);
    }

    /// <summary>
    /// A fresh LB namespace with eth0 (198.18.0.1/15), and when there are real servers, a second
    /// namespace on the other end of the veth that holds their addresses and so answers their ARP.
    /// Deleted on Dispose and when the process exits.
    /// </summary>
    internal sealed class BenchNet : IDisposable
    {
        private static int _counter;
        private readonly List<string> _namespaces = [];

        public string Lb { get; }

        private BenchNet(string prefix)
        {
            Lb = prefix + "lb";
            AppDomain.CurrentDomain.ProcessExit += OnExit;
        }

        public static BenchNet Create(IReadOnlyList<IPAddress> servers)
        {
            var prefix = $"mnb{Environment.ProcessId}-{Interlocked.Increment(ref _counter)}-";
            var net = new BenchNet(prefix);
            try
            {
                var srv = prefix + "srv";
                Shell.Run("ip", ["netns", "add", net.Lb]);
                net._namespaces.Add(net.Lb);
                Shell.Run("ip", ["netns", "add", srv]);
                net._namespaces.Add(srv);
                Shell.Run("ip", ["-n", net.Lb, "-batch", "-"], $"""
                    link set lo up
                    link add eth0 type veth peer name peer0 netns {srv}
                    addr add 198.18.0.1/15 dev eth0
                    link set eth0 up

                    """);
                var lines = new List<string> { "link set lo up", "link set peer0 up" };
                lines.AddRange(servers.Select(a => $"addr add {a}/32 dev peer0"));
                Shell.Run("ip", ["-n", srv, "-batch", "-"], string.Join('\n', lines) + "\n");
                return net;
            }
            catch
            {
                net.Dispose();
                throw;
            }
        }

        /// <summary>Resolves the real servers' MACs as the dataplane's managed neighbour entries would, before the clock starts.</summary>
        public async Task ResolveAsync(IReadOnlyList<IPAddress> servers)
        {
            if (servers.Count == 0) return;
            Shell.Run("ip", ["-n", Lb, "-force", "-batch", "-"], string.Join('\n', servers.Select(a => $"neigh replace {a} dev eth0 managed")) + "\n");
            var clock = Stopwatch.StartNew();
            while (true)
            {
                var known = Shell.Run("ip", ["-n", Lb, "neigh", "show", "dev", "eth0"]).Split('\n').Count(l => l.Contains("lladdr", StringComparison.Ordinal));
                if (known >= servers.Count) return;
                if (clock.Elapsed > TimeSpan.FromSeconds(60)) throw new TimeoutException($"only {known} of {servers.Count} real servers resolved");
                await Task.Delay(200);
            }
        }

        public void Dispose()
        {
            AppDomain.CurrentDomain.ProcessExit -= OnExit;
            foreach (var ns in _namespaces)
            {
                try { Shell.Run("ip", ["netns", "del", ns]); }
                catch (InvalidOperationException) { }
            }
            _namespaces.Clear();
        }

        private void OnExit(object? sender, EventArgs e) => Dispose();
    }

    /// <summary>
    /// Kernel memory from /proc/meminfo: unreclaimable slab + vmalloc + per-CPU. Machine-wide, so a
    /// delta includes whatever else the kernel did meanwhile; nft's set elements and hash tables are
    /// where nearly all of it goes at these sizes.
    /// </summary>
    internal static class KernelMemory
    {
        public static Dictionary<string, long> Read()
        {
            Thread.Sleep(500);
            return File.ReadAllLines("/proc/meminfo")
                .Select(l => l.Split(':', 2))
                .ToDictionary(p => p[0], p => long.Parse(p[1].Trim().Split(' ')[0], CultureInfo.InvariantCulture));
        }

        public static double DeltaMiB(Dictionary<string, long> before, Dictionary<string, long> after)
        {
            long Sum(Dictionary<string, long> m) => m["SUnreclaim"] + m["VmallocUsed"] + m.GetValueOrDefault("Percpu");
            return (Sum(after) - Sum(before)) / 1024.0;
        }
    }

    /// <summary>This process's resident memory now and at its peak (VmRSS, VmHWM), and the managed heap.</summary>
    internal static class ProcessMemory
    {
        public static string Text()
        {
            var status = File.ReadAllLines("/proc/self/status").Select(l => l.Split(':', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1].Trim());
            static string MiB(string kb) => $"{long.Parse(kb.Split(' ')[0], CultureInfo.InvariantCulture) / 1024.0:0} MiB";
            return $"RSS {MiB(status["VmRSS"])} (peak {MiB(status["VmHWM"])}, managed heap {GC.GetTotalMemory(false) / 1048576.0:0} MiB)";
        }
    }

    internal static class Shell
    {
        public static string Run(string file, IReadOnlyList<string> arguments, string? input = null)
        {
            var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = input is not null };
            foreach (var a in arguments) start.ArgumentList.Add(a);
            using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {file}");
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (input is not null)
            {
                process.StandardInput.Write(input);
                process.StandardInput.Close();
            }
            if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
            {
                process.Kill(entireProcessTree: true);
                throw new InvalidOperationException($"{file} {string.Join(' ', arguments.Take(6))}: no answer within 5 minutes");
            }
            if (process.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', arguments.Take(6))}: {stderr.Result.Trim()}");
            return stdout.Result;
        }
    }

    internal sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("merlin-nft-bench-").FullName;

        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); }
            catch (IOException) { }
        }
    }
}
