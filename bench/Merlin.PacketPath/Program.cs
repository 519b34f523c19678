using System.Globalization;
using Merlin.PacketPath;

// The packet path, measured (issue 18): the load balancer's kernel CPU per forwarded packet, read from
// the run time of its NAPI thread (threaded NAPI on every lab link), at one fixed UDP (or TCP) rate, for
//   a. the direct path (client → rs1, no load balancer),
//   b. a minimal hand-written netdev rule (match; ether saddr/daddr set; fwd),
//   c. Merlin's nftables DSR with 1 service,
//   d. Merlin with 1,000 services × 10 servers (1.02 M map elements), traffic to one.
// Rounds interleave the configurations (a, b, c, then a, b, d) so drift on a shared machine hits all of
// them; ratios to b are taken round by round. Run as root, under flock /tmp/merlin-bench.lock.
// With --ipvs (a kernel with IPVS: the qemu guest, bench/Merlin.PacketPath/ipvs-guest.sh), d is left out and
//   e. Merlin's IPVS dataplane (direct routing) with the same 1 service,
//   f. IPVS with 1,000 services × 10, traffic to one,
// follow in rounds of a, b, e and a, b, f: ratios within the guest only (its CPU is emulated).
// Usage: Merlin.PacketPath [--protocol udp|tcp] [--rate 20000] [--seconds 3] [--rounds 3] [--flows 16] [--real-servers 10] [--services 1000] [--variants a,b,…] [--no-many] [--ipvs]
if (args.Contains("--help"))
{
    Console.WriteLine("usage: Merlin.PacketPath [--protocol udp|tcp] [--rate 20000] [--seconds 3] [--rounds 3] [--flows 16] [--real-servers 10] [--services 1000] [--variants a,b,…] [--no-many] [--ipvs]");
    Console.WriteLine("  --protocol tcp: 64-byte segments on --flows connections to a discard server on each real server (opened per measurement)");
    Console.WriteLine("  --ipvs: a, b, c, then Merlin's IPVS dataplane with 1 and with --services services (e, f) instead of d; needs IPVS (tests/vm/ipvs-guest --script bench/Merlin.PacketPath/ipvs-guest.sh)");
    Console.WriteLine("  --variants: hand-made changes to the measured service's rules, each measured after c (and d) in every round:");
    foreach (var (name, what) in RuleVariants.Known) Console.WriteLine($"    {name}: {what}");
    Console.WriteLine("  --no-many: skip d (Merlin with --services services)");
    return 0;
}
var ipvs = args.Contains("--ipvs");
if (ipvs && !Directory.Exists("/sys/module/ip_vs"))
{
    Console.Error.WriteLine("Merlin.PacketPath --ipvs: this kernel has no IPVS; run it in the qemu guest: tests/vm/ipvs-guest --script bench/Merlin.PacketPath/ipvs-guest.sh");
    return 2;
}
if (!Environment.IsPrivilegedProcess)
{
    Console.Error.WriteLine("Merlin.PacketPath: run as root (it makes network namespaces and reads kernel threads' CPU time)");
    return 2;
}
string Arg(string name, string fallback) => Array.IndexOf(args, name) is var i && i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
int Int(string name, int fallback) => int.TryParse(Arg(name, fallback.ToString(CultureInfo.InvariantCulture)), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v)
    ? v : throw new ArgumentException($"{name} must be a whole number, got '{Arg(name, "")}'");
var options = new PacketPathOptions
{
    Rate = Int("--rate", 20_000),
    Duration = TimeSpan.FromSeconds(Int("--seconds", 3)),
    Flows = Int("--flows", 16),
    RealServers = Int("--real-servers", 10),
    Services = Int("--services", 1000),
    Protocol = Arg("--protocol", "udp") switch
    {
        "udp" => Merlin.Model.Protocol.Udp,
        "tcp" => Merlin.Model.Protocol.Tcp,
        var p => throw new ArgumentException($"--protocol must be udp or tcp, got '{p}'"),
    },
};
var rounds = Int("--rounds", 3);
var variants = Arg("--variants", "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
foreach (var v in variants)
    if (!RuleVariants.Known.ContainsKey(v)) throw new ArgumentException($"--variants: unknown variant '{v}'; known: {string.Join(", ", RuleVariants.Known.Keys)}");
var many = !args.Contains("--no-many") && !ipvs;
if (ipvs && variants.Length > 0) throw new ArgumentException("--variants and --ipvs do not mix");
if (variants.Length > 0 && options.Protocol != Merlin.Model.Protocol.Udp) throw new ArgumentException("--variants: the rule variants are written for the UDP load only");
if (rounds is < 1 or > 20) throw new ArgumentOutOfRangeException("--rounds", rounds, "--rounds must be 1…20");

string Load() => File.ReadAllText("/proc/loadavg").Trim();
Console.WriteLine($"packet path: {options.Rate:N0} {options.Protocol.ToString().ToUpperInvariant()} messages/s × {options.Duration.TotalSeconds:0} s over {options.Flows} flows, {rounds} round(s); kernel {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}; load {Load()}");
using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
var ct = stop.Token;
await using var harness = await PacketPathHarness.CreateAsync(options, line => Console.WriteLine($"  {line}"), ct);
Console.WriteLine($"  NAPI threads: {string.Join(", ", harness.Threads.Select(t => $"{t.Key}={t.Value}"))}");

var results = new List<Measurement>();
async Task MeasureAsync(PathConfig config, int round, string? label = null)
{
    var m = await (config == PathConfig.MinimalRule ? harness.MeasureMinimalRuleAsync(round, ct) : harness.MeasureAsync(config, round, ct)) with { Label = label ?? config.ToString() };
    results.Add(m);
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"  [{m.Label} round {round}] sent {m.Sent:N0} ({m.Sent / m.Elapsed.TotalSeconds:N0}/s, {m.Refused} refused), LB forwarded {m.LbForwarded:N0}, delivered {m.Delivered:N0}; " +
        $"LB {m.LbNs / 1e6:0.0} ms = {m.LbNsPerPacket:0} ns/packet, path {m.PathNs / 1e6:0.0} ms = {m.PathNsPerPacket:0} ns/packet; load {Load()}"));
}

// Phase 1: Merlin holds 1 service; b is the minimal rule in a chain ahead of Merlin's.
await harness.ProgramMerlinAsync(1, ct);
for (var r = 1; r <= rounds; r++)
{
    await MeasureAsync(PathConfig.Direct, r);
    await MeasureAsync(PathConfig.MinimalRule, r);
    await MeasureAsync(PathConfig.Merlin1, r);
    await VariantsAsync(r, PathConfig.Merlin1);
}

// Each variant of the measured service's rules, after Merlin's own (c or d) in the same round.
async Task VariantsAsync(int round, PathConfig of)
{
    foreach (var v in variants)
    {
        await harness.VariantAsync(v, ct);
        await MeasureAsync(PathConfig.Variant, round, $"{of} {v}");
        await harness.VariantAsync(null, ct);
    }
}
// Phase 2: the same service among many.
if (many)
{
    var clock = System.Diagnostics.Stopwatch.StartNew();
    await harness.ProgramMerlinAsync(options.Services, ct);
    Console.WriteLine($"  Merlin programmed with {options.Services:N0} services in {clock.Elapsed.TotalSeconds:0.0} s; load {Load()}");
    for (var r = 1; r <= rounds; r++)
    {
        await MeasureAsync(PathConfig.Direct, rounds + r);
        await MeasureAsync(PathConfig.MinimalRule, rounds + r);
        await MeasureAsync(PathConfig.MerlinMany, rounds + r);
        await VariantsAsync(rounds + r, PathConfig.MerlinMany);
    }
}

// Phase 3 (--ipvs): Merlin's IPVS dataplane instead of its nftables tables, with 1 service and then with many.
if (ipvs)
{
    await harness.ProgramIpvsAsync(1, ct);
    for (var r = 1; r <= rounds; r++)
    {
        await MeasureAsync(PathConfig.Direct, 2 * rounds + r);
        await MeasureAsync(PathConfig.MinimalRule, 2 * rounds + r);
        await MeasureAsync(PathConfig.Ipvs1, 2 * rounds + r);
    }
    var clock = System.Diagnostics.Stopwatch.StartNew();
    await harness.ProgramIpvsAsync(options.Services, ct);
    Console.WriteLine($"  IPVS programmed with {options.Services:N0} services in {clock.Elapsed.TotalSeconds:0.0} s; load {Load()}");
    for (var r = 1; r <= rounds; r++)
    {
        await MeasureAsync(PathConfig.Direct, 3 * rounds + r);
        await MeasureAsync(PathConfig.MinimalRule, 3 * rounds + r);
        await MeasureAsync(PathConfig.IpvsMany, 3 * rounds + r);
    }
}

static string Spread(IEnumerable<double> values, string format)
{
    var v = values.Where(x => !double.IsNaN(x)).Order().ToList();
    if (v.Count == 0) return "n/a";
    var median = v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    return string.Create(CultureInfo.InvariantCulture, $"{median.ToString(format, CultureInfo.InvariantCulture)} ({v[0].ToString(format, CultureInfo.InvariantCulture)}–{v[^1].ToString(format, CultureInfo.InvariantCulture)})");
}

// Ratios round by round: a configuration over the minimal rule measured in the same round.
double Ratio(Measurement m) => m.LbNsPerPacket / results.Single(x => x.Round == m.Round && x.Config == PathConfig.MinimalRule).LbNsPerPacket;
double PathRatio(Measurement m) => m.PathNsPerPacket / results.Single(x => x.Round == m.Round && x.Config == PathConfig.Direct).PathNsPerPacket;
Console.WriteLine();
Console.WriteLine("median (min–max) over the rounds:");
Console.WriteLine("| configuration | LB CPU per packet (ns) | LB / minimal rule | LB packets/s at one core | path CPU per packet (ns) | path / direct | delivered / sent |");
Console.WriteLine("|---|---|---|---|---|---|---|");
foreach (var label in results.Select(m => m.Label).Distinct().ToList())
{
    var ms = results.Where(m => m.Label == label).ToList();
    var config = ms[0].Config;
    var lb = config == PathConfig.Direct ? "—" : Spread(ms.Select(m => m.LbNsPerPacket), "0");
    var ratio = config == PathConfig.Direct ? "—" : Spread(ms.Select(Ratio), "0.00");
    var pps = config == PathConfig.Direct ? "—" : Spread(ms.Select(m => m.LbPacketsPerSecondAtOneCore / 1000), "0") + " k";
    Console.WriteLine($"| {label} | {lb} | {ratio} | {pps} | {Spread(ms.Select(m => m.PathNsPerPacket), "0")} | {Spread(ms.Select(PathRatio), "0.00")} | {Spread(ms.Select(m => (double)m.Delivered / m.Sent), "0.000")} |");
}
Console.WriteLine($"load at the end {Load()}");
return 0;
