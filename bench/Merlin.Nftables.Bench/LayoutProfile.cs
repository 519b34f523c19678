using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;

namespace Merlin.Nftables.Bench;

/// <summary>The layout and rendering work of one case without a kernel (--profile-layout): where the non-nft time goes, the build of a weight change step by step.</summary>
internal static class LayoutProfile
{
    public static void Run(int count, int perService, string kind = "distinct", int weightChanges = 0)
    {
        var options = new NftablesOptions { HashSeed = Workload.Seed, Interface = "eth0", OwnMac = PhysicalAddress.Parse("02-00-00-00-00-AA") };
        var services = new Dictionary<ServiceKey, ServiceState>();
        foreach (var (service, servers) in Workload.Services(kind, count, perService))
        {
            var key = ServiceKey.ForAddress(IPAddress.Parse(service.Key.Ip), (ushort)service.Key.Port, Protocol.Tcp);
            services[key] = new ServiceState(key, new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2 },
                servers.ToDictionary(r => new RealServerKey(IPAddress.Parse(r.Key.Ip), (ushort)r.Key.Port), r => new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route }));
        }
        var macs = services.Values.SelectMany(s => s.Servers.Keys).Select(k => k.Address).Distinct()
            .ToDictionary(a => a, a => { var b = a.GetAddressBytes(); return new PhysicalAddress([2, 0, b[0], b[1], b[2], b[3]]); });
        for (int round = 0; round < 6; round++)
        {
            var firstPhases = new Phases();
            var sw = Stopwatch.StartNew();
            var cache = new BuildCache();
            var first = LayoutBuilder.Build(new LayoutInput(services, macs, options.OwnMac, Assignment.Empty), options, cache, firstPhases);
            var tBuild = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var full = ScriptRenderer.Full(first.Ruleset);
            var tRender = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var again = LayoutBuilder.Build(new LayoutInput(services, macs, options.OwnMac, first.Assignment), options, cache);
            var tAgain = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var none = ScriptRenderer.Diff(first.Ruleset, again.Ruleset);
            var tNone = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var changed = new Dictionary<ServiceKey, ServiceState>(services);
            foreach (var one in kind == "shared" ? changed.Values.ToList() : [changed.Values.First()])
            {
                var servers = one.Servers.ToDictionary();
                var target = servers.Keys.Order().ElementAt(3);
                servers[target] = servers[target] with { Weight = 2 + (uint)round };
                changed[one.Key] = one with { Servers = servers };
            }
            var phases = new Phases();
            sw.Restart();
            var weight = LayoutBuilder.Build(new LayoutInput(changed, macs, options.OwnMac, again.Assignment), options, cache, phases);
            var tWeight = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var diff = ScriptRenderer.Diff(again.Ruleset, weight.Ruleset);
            var tDiff = sw.Elapsed.TotalMilliseconds;
            Console.WriteLine($"round {round}: build {tBuild:0} ms ({string.Join(", ", firstPhases.Take().Select(p => $"{p.Key} {p.Value:0}"))}), full render {tRender:0} ms ({full.Length / 1048576.0:0.0} M chars), rebuild unchanged {tAgain:0} ms, diff {tNone:0} ms ({none.Length} chars), " +
                $"rebuild after one weight change {tWeight:0.0} ms ({string.Join(", ", phases.Take().Select(p => $"{p.Key} {p.Value:0.0}"))}), diff {tDiff:0.0} ms ({diff.Count(c => c == '\n')} lines)");
        }
        if (weightChanges > 0) SteadyChanges(services, macs, options, kind, weightChanges);
    }

    /// <summary>
    /// One weight change after another on one cache, as a running dataplane sees them: per phase, and for the build and
    /// the diff as a whole, the median and 90th percentile in milliseconds, with the gen-0/1/2 collections the loop caused.
    /// </summary>
    private static void SteadyChanges(Dictionary<ServiceKey, ServiceState> services, Dictionary<IPAddress, PhysicalAddress> macs,
        NftablesOptions options, string kind, int changes)
    {
        var cache = new BuildCache();
        // The MACs never change here: one version, as the neighbour tracker would give.
        var layout = LayoutBuilder.Build(new LayoutInput(services, macs, options.OwnMac, Assignment.Empty) { MacsVersion = 0 }, options, cache);
        var current = new Dictionary<ServiceKey, ServiceState>(services);
        var keys = current.Keys.Order(ServiceKeyComparer.Instance).ToList();
        var samples = new Dictionary<string, List<double>>(StringComparer.Ordinal);
        void Sample(string name, double ms) { if (!samples.TryGetValue(name, out var list)) samples[name] = list = []; list.Add(ms); }
        var phases = new Phases();
        int gen0 = 0, gen1 = 0, gen2 = 0;
        long patches = 0;
        // Untimed first: rounds of 10 changes until one compiles fewer than 5 methods (at most 10 rounds), so the
        // timed ones measure tiered-up code, as a daemon's builds are after its first minutes.
        int warmUp = 0;
        for (int round = 0, compiled = int.MaxValue; round < 10 && compiled >= 5; round++, warmUp += 10)
        {
            long jit = System.Runtime.JitInfo.GetCompiledMethodCount();
            for (int k = 0; k < 10; k++) Change(-1 - warmUp - k, timed: false);
            compiled = (int)(System.Runtime.JitInfo.GetCompiledMethodCount() - jit);
        }
        (gen0, gen1, gen2, patches) = (GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2), cache.Patches);
        for (int i = 0; i < changes; i++) Change(i, timed: true);

        void Change(int i, bool timed)
        {
            // One server of one service (every service in the shared case) changes weight, as the fan-out measures it.
            foreach (var key in kind == "shared" ? keys : [keys[((i % keys.Count) + keys.Count) % keys.Count]])
            {
                var one = current[key];
                var servers = one.Servers.ToDictionary();
                var target = servers.Keys.Order().ElementAt(((i % servers.Count) + servers.Count) % servers.Count);
                servers[target] = servers[target] with { Weight = servers[target].Weight == 1 ? 2u : 1u };
                current[key] = one with { Servers = servers };
            }
            var input = new Dictionary<ServiceKey, ServiceState>(current);
            long started = Stopwatch.GetTimestamp();
            var next = LayoutBuilder.Build(new LayoutInput(input, macs, options.OwnMac, layout.Assignment) { MacsVersion = 0 }, options, cache, phases);
            var built = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            started = Stopwatch.GetTimestamp();
            _ = ScriptRenderer.DiffScript(layout.Ruleset, next.Ruleset, stage: true);
            var diffed = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            var took = phases.Take();
            layout = next;
            if (!timed) return;
            Sample("build", built);
            Sample("diff", diffed);
            foreach (var (phase, ms) in took) Sample(phase, ms);
        }
        static double At(List<double> list, double q) { var sorted = list.Order().ToList(); return sorted[(int)Math.Min(sorted.Count - 1, Math.Floor(q * sorted.Count))]; }
        Console.WriteLine($"{changes} weight changes after {warmUp} untimed, {services.Count:N0} services ({kind}), load {File.ReadAllText("/proc/loadavg").Trim()}: " +
            $"collections gen0 {GC.CollectionCount(0) - gen0}, gen1 {GC.CollectionCount(1) - gen1}, gen2 {GC.CollectionCount(2) - gen2}; {cache.Patches - patches} of {changes} builds were patches of the last");
        foreach (var (name, list) in samples)
            Console.WriteLine($"  {name,-16} p50 {At(list, 0.5),7:0.00} ms   p90 {At(list, 0.9),7:0.00} ms");
    }
}
