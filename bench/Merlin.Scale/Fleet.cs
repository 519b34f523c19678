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
                // The first 20 changes are not counted: they run the daemons' watch, pass and dataplane code while .NET
                // is still tiering it up (with one warm-up change, the slowest of 50 counted ones was such a change).
                const int warmUp = 20;
                for (var r = -warmUp; r < o.Changes; r++)
                {
                    var service = (r + warmUp) * 7 % o.Services;
                    var j = (r + warmUp) % o.Servers;
                    var weight = (uint)(100 + r);
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
                            if (index >= o.Daemons) lock (nftPasses) nftPasses.Add(pass.Duration.TotalMilliseconds);
                            if (Interlocked.Decrement(ref left) == 0) all.TrySetResult();
                        };
                        loops[d].PassCompleted += handlers[d];
                    }
                    var paused = GC.GetTotalPauseDuration();
                    sw.Start();
                    await clients[(r + warmUp) % daemons].UpdateServerAsync(server);
                    await all.Task.WaitAsync(TimeSpan.FromMinutes(1));
                    paused = GC.GetTotalPauseDuration() - paused;
                    for (var d = 0; d < daemons; d++) loops[d].PassCompleted -= handlers[d];
                    if (r < 0)
                    {
                        lock (nftPasses) nftPasses.Clear();
                        continue;
                    }
                    fanOut.Add(applied.Max());
                    pauses.Add((applied.Max(), paused.TotalMilliseconds));
                    each.AddRange(applied.Take(o.Daemons));
                    appliedNft.AddRange(applied.Skip(o.Daemons));
                    await Task.Delay(100);
                }
                fanOut.Sort();
                appliedNft.Sort();
                each.Sort();
                nftPasses.Sort();
                var nft = appliedNft.Count == 0 ? "" : $"; the {o.NftDaemons} nftables daemons: p50 {Harness.P(appliedNft, 0.5):N0} ms, p99 {Harness.P(appliedNft, 0.99):N0} ms, of which their pass p50 {Harness.P(nftPasses, 0.5):N0} ms, p99 {Harness.P(nftPasses, 0.99):N0} ms";
                var slowest = pauses.MaxBy(p => p.FanOut);
                var gc = $"; the daemons share one process: its GC paused it {pauses.Sum(p => p.Paused) / pauses.Count:N0} ms per change on average, {slowest.Paused:N0} ms during the slowest";
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
