using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables;
using Merlin.Model;
using Merlin.Reconciler;

namespace Merlin.Nftables.Bench;

/// <summary>
/// What taking a server out of a service costs when the flow map holds pins: one DSR service of ten servers in a
/// fresh namespace, its flow map filled with <c>pins</c> pins spread evenly over the ten (written with nft, as the
/// packet path would hold them), then one server removed through the dataplane, which deletes that server's pins in
/// the background after the transaction. Reported: the change's apply (which does not wait for the sweep), the first
/// sweep (the server's pins are gone when it ends), the second one, and the time from the change to the end of both;
/// the row with no pins is the reference.
/// </summary>
internal static class PinSweepProfile
{
    private static readonly ServiceKey Vip = ServiceKey.ForAddress(IPAddress.Parse("198.18.4.1"), 80, Protocol.Tcp);

    public static async Task<int> RunAsync(IReadOnlyList<int> counts, int runs)
    {
        var servers = Enumerable.Range(1, 10).Select(i => IPAddress.Parse($"198.19.0.{i}")).ToList();
        Console.WriteLine($"pin sweep: 1 service × 10 servers, one server removed; kernel {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}, load {File.ReadAllText("/proc/loadavg").Trim()}");
        Console.WriteLine();
        Console.WriteLine("| pins in flows4 | run | pins deleted | apply (the change) | first sweep: read + delete | second sweep (after 50 ms) | change → sweeps done | pins left / expected |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var count in counts)
            for (int run = 1; run <= runs; run++)
            {
                using var net = BenchNet.Create([]);
                // One MAC per server: a macvlan each behind the LB's peer, answering ARP for its own address only.
                var srv = net.Lb[..^"lb".Length] + "srv";
                Shell.Run("ip", ["netns", "exec", srv, "sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1"]);
                Shell.Run("ip", ["-n", srv, "-batch", "-"], string.Concat(servers.Select((a, i) =>
                    $"link add mv{i} link peer0 type macvlan mode bridge\nlink set mv{i} address 02:00:c6:13:00:{i + 1:x2} up\naddr add {a}/32 dev mv{i}\n")));
                await net.ResolveAsync(servers);
                using var nft = new RecordingNftables(net.Lb, cli: false);
                var dataplane = Workload.Dataplane(net.Lb, nft, stage: true);
                var all = new ServiceState(Vip, new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2 },
                    servers.ToDictionary(a => new RealServerKey(a, 80), _ => new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route }));
                await ApplyAsync(dataplane, new Dictionary<ServiceKey, ServiceState> { [Vip] = all });
                await dataplane.PinSweepRunning;   // the start's sweep
                var macs = MacsOf(net.Lb, servers);
                FillPins(net.Lb, count, macs);
                var leaving = new RealServerKey(servers[0], 80);
                var fewer = all with { Servers = all.Servers.Where(s => s.Key != leaving).ToDictionary() };
                dataplane.Phases.Take();

                var clock = Stopwatch.StartNew();
                await ApplyAsync(dataplane, new Dictionary<ServiceKey, ServiceState> { [Vip] = fewer });
                var apply = clock.Elapsed.TotalMilliseconds;
                await dataplane.PinSweepRunning;
                var done = clock.Elapsed.TotalMilliseconds;
                var phases = dataplane.Phases.Take();

                int left = Count(net.Lb);
                int expected = count - (count + 9) / 10;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {count:N0} | {run} | {count - left:N0} | {apply:0} ms | {phases.GetValueOrDefault("sweep pins"):0.0} ms | {phases.GetValueOrDefault("sweep pins: again"):0} ms | {done:0} ms | {left:N0} / {expected:N0} |"));
                if (left != expected) throw new InvalidOperationException($"{left} pins left where {expected} were expected");
                dataplane.Dispose();
            }
        return 0;
    }

    private static async Task ApplyAsync(NftablesDataplane dataplane, Dictionary<ServiceKey, ServiceState> desired)
    {
        var plan = Planner.Plan(new DataplaneState(desired), await dataplane.ReadAsync(CancellationToken.None));
        var errors = await dataplane.ApplyAsync(plan, CancellationToken.None);
        if (errors.FirstOrDefault(e => e is not null) is { } error) throw new InvalidOperationException($"apply failed: {error.Message}");
    }

    private static List<string> MacsOf(string ns, List<IPAddress> servers)
    {
        var neighbours = Shell.Run("ip", ["-n", ns, "neigh", "show", "dev", "eth0"]).Split('\n');
        return servers.Select(a => neighbours.First(l => l.StartsWith(a + " ", StringComparison.Ordinal)).Split(' ')[2]).ToList();
    }

    /// <summary>Pin i: client 198.18.200.x port 1024 + …, to the VIP, pinned to server i mod 10.</summary>
    private static void FillPins(string ns, int count, List<string> macs)
    {
        for (int from = 0; from < count; from += 20_000)
        {
            var script = new StringBuilder("add element netdev merlin flows4 { ");
            for (int i = from; i < Math.Min(count, from + 20_000); i++)
            {
                if (i > from) script.Append(", ");
                script.Append(CultureInfo.InvariantCulture, $"198.18.{200 + i / 60_000}.{i / 240 % 250 + 1} . 198.18.4.1 . {1024 + i % 240} . 80 : {macs[i % 10]}");
            }
            script.Append(" }\n");
            Shell.Run("ip", ["netns", "exec", ns, "nft", "-f", "-"], script.ToString());
        }
        if (Count(ns) != count) throw new InvalidOperationException($"flows4 holds {Count(ns)} pins where {count} were written");
    }

    private static int Count(string ns)
    {
        using var socket = Merlin.Dataplane.Nftables.Kernel.NfNetlink.Open(ns);
        return Merlin.Dataplane.Nftables.Kernel.SetElements.Read(socket, "netdev", "merlin", "flows4").Count;
    }
}
