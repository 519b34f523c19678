using System.Diagnostics;
using System.Net;
using Grpc.Net.Client;
using Merlin.Daemon;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

/// <summary>
/// --daemons N: an etcd cluster of --etcd-members members on loopback and N real daemons (--dataplane none, in this
/// process, each with its own API and health ports and its own store client on every member), --services × --servers
/// created through the first daemon's API; then --changes weight changes of one server, each through the next
/// daemon's API in turn, one at a time. A change is applied by a daemon when the pass that programmed it ends: the
/// daemon's dataplane read (the none dataplane's snapshot) shows the new weight when its loop reports the pass. The
/// fan-out latency of a change is from just before the UpdateServer call to the last of the N daemons applying it.
/// --nft-daemons K more daemons program the nftables dataplane, each in a scratch network namespace the harness
/// creates (a veth pair in it, one end as --interface) and removes; for them a change is applied when the first pass that applied
/// operations ends after the call (their kernel tables are not read back). Servers are NAT (masq) here, so the
/// nftables daemons program them without neighbours.
/// </summary>
static class Fleet
{
    private static RealServer Nat(RealServer server)
    {
        server.Config.Forward = ForwardMethod.Masq;
        return server;
    }

    public static async Task<List<string>> Run(Args o)
    {
        var rows = new List<string>();
        using var dir = new TempDir("scale-fleet");
        using var cluster = EtcdCluster.Launch(o.EtcdMembers);
        var apps = new List<WebApplication>();
        var ports = new List<int>();
        var namespaces = new List<ScratchNamespace>();
        try
        {
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < o.Daemons; i++)
            {
                var state = Path.Combine(dir.Path, $"daemon-{i}");
                Directory.CreateDirectory(state);
                var options = new DaemonOptions
                {
                    Port = LocalPorts.Free(), HealthPort = LocalPorts.Free(), StoreBackend = "etcd3", StoreEndpoints = cluster.Endpoints,
                    StoreTimeout = TimeSpan.FromSeconds(30), StateDir = state, SyncPeriod = TimeSpan.FromHours(1), LogFormat = "text", LogLevel = "warning",
                };
                var app = DaemonHost.Build(options);
                apps.Add(app);
                await app.StartAsync();
                ports.Add(options.Port);
            }
            for (var i = 0; i < o.NftDaemons; i++)
            {
                if (!Environment.IsPrivilegedProcess) throw new InvalidOperationException("--nft-daemons needs root (it creates network namespaces)");
                var ns = new ScratchNamespace("scale");
                namespaces.Add(ns);
                ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "add", "lb0", "type", "veth", "peer", "name", "lb1"]);
                ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "lb0", "up"]);
                ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "lb1", "up"]);
                var state = Path.Combine(dir.Path, $"nft-daemon-{i}");
                Directory.CreateDirectory(state);
                var options = new DaemonOptions
                {
                    Port = LocalPorts.Free(), HealthPort = LocalPorts.Free(), StoreBackend = "etcd3", StoreEndpoints = cluster.Endpoints,
                    StoreTimeout = TimeSpan.FromSeconds(30), StateDir = state, SyncPeriod = TimeSpan.FromHours(1), LogFormat = "text", LogLevel = "warning",
                    DataplaneKind = "nftables", NetworkNamespace = ns.Name, Interface = "lb0", HashSeed = 0x5eed0001,
                };
                var app = DaemonHost.Build(options);
                apps.Add(app);
                await app.StartAsync();
                ports.Add(options.Port);
            }
            var daemons = o.Daemons + o.NftDaemons;
            Console.WriteLine($"[fleet] {o.Daemons} + {o.NftDaemons} nftables daemons up on {o.EtcdMembers} etcd members in {clock.Elapsed.TotalSeconds:N1} s");

            var channels = ports.Select(p => GrpcChannel.ForAddress($"http://127.0.0.1:{p}")).ToArray();
            try
            {
                var clients = channels.Select(c => new Merlin.Contracts.Merlin.MerlinClient(c)).ToArray();
                await Harness.Parallel(o.Services, o.Concurrency, async i => await clients[0].CreateServiceAsync(Harness.Service(i)), "[fleet] services");
                await Harness.Parallel(o.Services * o.Servers, o.Concurrency, async i => await clients[0].CreateServerAsync(Nat(Harness.Server(i / o.Servers, i % o.Servers))), "[fleet] servers");
                var dataplanes = apps.Take(o.Daemons).Select(a => (InMemoryDataplane)a.Services.GetRequiredService<IDataplane>()).ToArray();
                var loops = apps.Select(a => a.Services.GetRequiredService<ReconcileLoop>()).ToArray();
                // The nftables daemons' dataplanes, for where their passes' time went (phases per change).
                var nftDataplanes = apps.Skip(o.Daemons).Select(a => a.Services.GetRequiredService<IDataplane>()).OfType<Merlin.Dataplane.Nftables.NftablesDataplane>().ToArray();
                var total = o.Services * o.Servers;
                clock.Restart();
                await Poll.UntilAsync(() => dataplanes.All(d => d.State.ServerCount == total), "every none daemon programming all servers", limit: TimeSpan.FromMinutes(5), interval: TimeSpan.FromMilliseconds(100));
                if (o.NftDaemons > 0)
                {
                    var nftStatus = apps.Skip(o.Daemons).Select(a => a.Services.GetRequiredService<ReconcilerStatus>()).ToArray();
                    await Poll.UntilAsync(() => nftStatus.All(s => s.Current.Ready), "every nftables daemon's first pass", limit: TimeSpan.FromMinutes(5), interval: TimeSpan.FromMilliseconds(100),
                        state: () => string.Join("; ", nftStatus.Select(s => s.Current.LastError ?? "no error")));
                }

                var fanOut = new List<double>();
                var appliedNft = new List<double>();
                var nftPasses = new List<double>(); // the durations of the nftables daemons' passes that applied a change
                var pauses = new List<(double FanOut, double Paused)>(); // this process's GC pauses (every daemon's) during each change
                var each = new List<double>();
                var phases = new List<(double Pass, IReadOnlyDictionary<string, double> Phases)>(); // each nftables daemon's pass that applied a change
                // One change: the next server's weight, through the next daemon's API; its applied times per daemon.
                var sequence = 0;
                async Task<(double[] Applied, double Paused, int Jit)> Change()
                {
                    var n = sequence++;
                    var service = n * 7 % o.Services;
                    var j = n % o.Servers;
                    var weight = (uint)(100 + n);
                    var server = Nat(Harness.Server(service, j));
                    server.Config.Weight = weight;
                    var key = Merlin.Model.ServiceKey.ForAddress(IPAddress.Parse(Harness.Service(service).Key.Ip), 80, Merlin.Model.Protocol.Tcp);
                    var serverKey = new Merlin.Model.RealServerKey(IPAddress.Parse(server.Key.Ip), (ushort)server.Key.Port);
                    var applied = new double[daemons];
                    var left = daemons;
                    var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    var sw = new Stopwatch();
                    var handlers = new Action<PassResult>[daemons];
                    for (var d = 0; d < daemons; d++)
                    {
                        var index = d;
                        handlers[d] = pass =>
                        {
                            if (applied[index] != 0 || !sw.IsRunning) return;
                            if (index >= o.Daemons ? pass.Applied == 0
                                : !dataplanes[index].State.Services.TryGetValue(key, out var s) || !s.Servers.TryGetValue(serverKey, out var c) || c.Weight != weight) return;
                            applied[index] = sw.Elapsed.TotalMilliseconds;
                            if (index >= o.Daemons)
                                lock (nftPasses)
                                {
                                    nftPasses.Add(pass.Duration.TotalMilliseconds);
                                    phases.Add((pass.Duration.TotalMilliseconds, nftDataplanes[index - o.Daemons].Phases.Take()));
                                }
                            if (Interlocked.Decrement(ref left) == 0) all.TrySetResult();
                        };
                        loops[d].PassCompleted += handlers[d];
                    }
                    foreach (var dataplane in nftDataplanes) dataplane.Phases.Take();
                    var paused = GC.GetTotalPauseDuration();
                    var jit = System.Runtime.JitInfo.GetCompiledMethodCount();
                    sw.Start();
                    await clients[n % daemons].UpdateServerAsync(server);
                    await all.Task.WaitAsync(TimeSpan.FromMinutes(1));
                    var compiled = (int)(System.Runtime.JitInfo.GetCompiledMethodCount() - jit);
                    paused = GC.GetTotalPauseDuration() - paused;
                    for (var d = 0; d < daemons; d++) loops[d].PassCompleted -= handlers[d];
                    await Task.Delay(100);
                    return (applied, paused.TotalMilliseconds, compiled);
                }

                // Not counted: rounds of 10 changes until one compiles almost nothing (at most 30 rounds). Until then the
                // daemons' watch, pass and dataplane code is still being tiered up (instrumented, then optimised), and the
                // tiered-compilation thread took over half of the process's busy time during the first counted changes
                // with a fixed 20 warm-up changes (perf, session 19). A daemon that has run a few minutes no longer pays it.
                var jitBefore = System.Runtime.JitInfo.GetCompiledMethodCount();
                for (var round = 1; ; round++)
                {
                    var compiled = 0;
                    for (var i = 0; i < 10; i++) compiled += (await Change()).Jit;
                    if (compiled < 20 || round == 30)
                    {
                        Console.WriteLine($"[fleet] warm-up: {round * 10} changes, {System.Runtime.JitInfo.GetCompiledMethodCount() - jitBefore:N0} methods compiled, {compiled} in the last 10");
                        break;
                    }
                }
                lock (nftPasses) { nftPasses.Clear(); phases.Clear(); }
                var jits = new List<(double FanOut, int Jit)>();
                for (var r = 0; r < o.Changes; r++)
                {
                    var (applied, paused, compiled) = await Change();
                    fanOut.Add(applied.Max());
                    pauses.Add((applied.Max(), paused));
                    jits.Add((applied.Max(), compiled));
                    each.AddRange(applied.Take(o.Daemons));
                    appliedNft.AddRange(applied.Skip(o.Daemons));
                }
                fanOut.Sort();
                appliedNft.Sort();
                each.Sort();
                nftPasses.Sort();
                var nft = appliedNft.Count == 0 ? "" : $"; the {o.NftDaemons} nftables daemons: p50 {Harness.P(appliedNft, 0.5):N0} ms, p99 {Harness.P(appliedNft, 0.99):N0} ms, of which their pass p50 {Harness.P(nftPasses, 0.5):N0} ms, p99 {Harness.P(nftPasses, 0.99):N0} ms";
                if (phases.Count > 0)
                {
                    // Per phase: the median over the nftables daemons' passes, and what the slowest pass spent in it.
                    var slowestPass = phases.MaxBy(p => p.Pass);
                    var names = phases.SelectMany(p => p.Phases.Keys).Distinct().Where(n => !n.StartsWith("build: ", StringComparison.Ordinal)).ToList();
                    Console.WriteLine($"[fleet] the nftables daemons' passes by dataplane phase, ms (median / the slowest pass, {slowestPass.Pass:N0} ms): " +
                        string.Join(", ", names.Select(n => $"{n} {Harness.P(phases.Select(p => p.Phases.GetValueOrDefault(n)).Order().ToList(), 0.5):N1} / {slowestPass.Phases.GetValueOrDefault(n):N1}")));
                }
                var slowest = pauses.MaxBy(p => p.FanOut);
                var gc = $"; the daemons share one process: its GC paused it {pauses.Sum(p => p.Paused) / pauses.Count:N0} ms per change on average, {slowest.Paused:N0} ms during the slowest" +
                         $"; the JIT compiled {jits.Sum(j => j.Jit):N0} methods during the counted changes, {jits.MaxBy(j => j.FanOut).Jit} during the slowest";
                Console.WriteLine($"[fleet] weight change → applied by all {daemons}: p50 {Harness.P(fanOut, 0.5):N0} ms, p99 {Harness.P(fanOut, 0.99):N0} ms, max {fanOut[^1]:N0} ms; " +
                                  $"by one daemon: p50 {Harness.P(each, 0.5):N0} ms, p99 {Harness.P(each, 0.99):N0} ms");
                rows.Add($"| etcd3 ×{o.EtcdMembers} | one server's weight change → applied by all {o.Daemons} none + {o.NftDaemons} nftables daemons, {o.Services:N0} × {o.Servers}, {o.Changes} changes | " +
                         $"p50 {Harness.P(fanOut, 0.5):N0} ms, p99 {Harness.P(fanOut, 0.99):N0} ms, max {fanOut[^1]:N0} ms (one none daemon: p50 {Harness.P(each, 0.5):N0} ms, p99 {Harness.P(each, 0.99):N0} ms{nft}{gc}) |");
            }
            finally
            {
                foreach (var channel in channels) channel.Dispose();
            }
        }
        finally
        {
            foreach (var app in apps)
            {
                await app.StopAsync();
                await app.DisposeAsync();
            }
            foreach (var ns in namespaces) ns.Dispose();
        }
        return rows;
    }
}
