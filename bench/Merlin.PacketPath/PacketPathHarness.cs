using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Ipvs;
using Merlin.Dataplane.Nftables;
using Merlin.Lab;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.PacketPath;

/// <summary>The ways a packet from the client can reach a real server.</summary>
public enum PathConfig
{
    /// <summary>a. client → real server, no load balancer (the client's route to the VIP points at rs1).</summary>
    Direct,

    /// <summary>b. one hand-written netdev ingress rule on the LB: match, <c>ether saddr/daddr set</c>, <c>fwd</c>.</summary>
    MinimalRule,

    /// <summary>c. Merlin's nftables DSR holding 1 service of <see cref="PacketPathOptions.RealServers"/> servers.</summary>
    Merlin1,

    /// <summary>d. Merlin holding <see cref="PacketPathOptions.Services"/> services × 10 servers (1 M map elements), traffic to one.</summary>
    MerlinMany,

    /// <summary>c or d with Merlin's rules for the measured service changed by hand (<see cref="RuleVariants"/>).</summary>
    Variant,

    /// <summary>e. Merlin's IPVS dataplane (direct routing) holding the same 1 service: a kernel with IPVS only (the qemu guest).</summary>
    Ipvs1,

    /// <summary>f. Merlin's IPVS dataplane holding <see cref="PacketPathOptions.Services"/> services × 10 servers, traffic to one.</summary>
    IpvsMany,
}

public sealed record PacketPathOptions
{
    /// <summary>Packets a second, the same for every configuration so CPU per packet is compared at equal rates.</summary>
    public int Rate { get; init; } = 20_000;

    /// <summary>Length of one measurement (after a short warm-up that is not counted).</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>UDP flows (source ports) the load is spread over.</summary>
    public int Flows { get; init; } = 16;

    /// <summary>Lab real servers (rs1…): the servers of the measured service.</summary>
    public int RealServers { get; init; } = 10;

    /// <summary>Services in configuration d (service 0 is the measured one; the others have 10 servers each from a pool).</summary>
    public int Services { get; init; } = 1000;

    public int Port { get; init; } = 9999;

    /// <summary>UDP datagrams dropped by the real servers before their stack, or TCP segments on connections to a discard server.</summary>
    public Protocol Protocol { get; init; } = Protocol.Udp;

    public void Validate()
    {
        if (Protocol is not (Protocol.Udp or Protocol.Tcp)) throw new ArgumentOutOfRangeException(nameof(Protocol), Protocol, "Protocol must be UDP or TCP");
        if (Rate is < 1 or > 1_000_000) throw new ArgumentOutOfRangeException(nameof(Rate), Rate, "Rate must be 1…1,000,000 packets a second");
        if (Duration <= TimeSpan.Zero || Duration > TimeSpan.FromMinutes(5)) throw new ArgumentOutOfRangeException(nameof(Duration), Duration, "Duration must be more than 0 and at most 5 minutes");
        if (Flows is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(Flows), Flows, "Flows must be 1…1,024");
        if (RealServers is < 1 or > 40) throw new ArgumentOutOfRangeException(nameof(RealServers), RealServers, "RealServers must be 1…40");
        if (Services is < 2 or > 1000) throw new ArgumentOutOfRangeException(nameof(Services), Services, "Services must be 2…1,000");
    }
}

/// <summary>
/// One measurement. <see cref="LbNs"/> is the run time of the LB's NAPI thread (lb1's eth0: receive, the
/// ingress hook, nftables, fwd, the transmit to the bridge); <see cref="PathNs"/> is the run time of every
/// NAPI thread on the way (the bridge ports, the LB, the real servers' receive).
/// </summary>
public sealed record Measurement(PathConfig Config, int Round, long Sent, long Refused, long LbForwarded, long Delivered, long LbNs, long PathNs, TimeSpan Elapsed)
{
    /// <summary>What was measured: the configuration, or for <see cref="PathConfig.Variant"/> the variant's name.</summary>
    public string Label { get; init; } = Config.ToString();

    /// <summary>LB kernel CPU per forwarded packet, ns (NaN for the direct path).</summary>
    public double LbNsPerPacket => LbForwarded > 0 ? (double)LbNs / LbForwarded : double.NaN;

    /// <summary>Kernel CPU of the whole path per delivered packet, ns.</summary>
    public double PathNsPerPacket => Delivered > 0 ? (double)PathNs / Delivered : double.NaN;

    /// <summary>Packets a second the LB's one thread could forward at this cost: 10⁹ / ns per packet.</summary>
    public double LbPacketsPerSecondAtOneCore => 1e9 / LbNsPerPacket;
}

/// <summary>
/// The lab for the packet-path benchmark: a client, lb1, rs1…rsN (and, for many services, a host answering
/// ARP for a pool of 200 server addresses), with every link a veth with GRO and threaded NAPI, so each
/// receiving end's work runs on a kernel thread of its own whose CPU time is read (see <see cref="NapiThreads"/>).
/// The load balancer is programmed by Merlin's nftables dataplane in this process (the library the daemon runs).
/// </summary>
public sealed class PacketPathHarness : IAsyncDisposable
{
    public const uint HashSeed = 0x5eed1234;
    private const string MinimalTable = "pp_minimal";
    private const int PoolSize = 200;

    private readonly Lab.Lab _lab;
    private readonly PacketPathOptions _options;
    private readonly Dictionary<string, int> _threads = new(StringComparer.Ordinal);
    private readonly Action<string> _log;
    private NftablesDataplane? _dataplane;
    private IpvsDataplane? _ipvs;
    private RuleVariants.Listed? _listed;
    private bool _poolReady;
    private readonly List<DiscardServer> _discard = [];

    private PacketPathHarness(Lab.Lab lab, PacketPathOptions options, Action<string> log)
    {
        _lab = lab;
        _options = options;
        _log = log;
    }

    public LabHost Client => _lab.Client;
    public LabHost Lb => _lab.LoadBalancers[0];
    public IReadOnlyList<LabHost> Servers => _lab.RealServers;
    public IPEndPoint Target => new(_lab.Vip, _options.Port);

    /// <summary>The NAPI threads measured, by link end ("lb1:eth0", "bridge:rs2", …).</summary>
    public IReadOnlyDictionary<string, int> Threads => _threads;

    public static async Task<PacketPathHarness> CreateAsync(PacketPathOptions options, Action<string>? log = null, CancellationToken ct = default)
    {
        options.Validate();
        var ethtool = Requires.FindOnPath("ethtool") ?? throw new InvalidOperationException("the packet-path lab needs ethtool (apt-get install ethtool)");
        var lab = await Lab.Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = options.RealServers, IPv6 = false, ExtraHosts = ["pool"] }, ct);
        var harness = new PacketPathHarness(lab, options, log ?? (_ => { }));
        try
        {
            await harness.SetUpAsync(ethtool, ct);
            return harness;
        }
        catch
        {
            await harness.DisposeAsync();
            throw;
        }
    }

    private async Task SetUpAsync(string ethtool, CancellationToken ct)
    {
        // Every sending end without TSO: veth hands a packet to the peer's NAPI only then (a forwarded
        // frame has no socket to take the other way in). Noqueue stays: a full NAPI ring drops and is counted,
        // rather than a qdisc whose restart would run on the consuming thread's clock.
        foreach (var host in _lab.Hosts)
            await Commands.RunAsync(["ip", "netns", "exec", host.Namespace, ethtool, "-K", host.Interface, "tso", "off"], ct: ct);
        foreach (var port in _lab.Hosts.Select(h => h.Primary.BridgePort))
            await Commands.RunAsync(["ip", "netns", "exec", _lab.BridgeNamespace, ethtool, "-K", port, "tso", "off"], ct: ct);

        // Receiving ends on the packets' way get GRO (which gives a veth its NAPI) and a NAPI thread, one at a
        // time so each new thread is known to be that device's.
        foreach (var host in new[] { Client, Lb }.Concat(Servers))
            await ThreadedAsync($"bridge:{host.Primary.BridgePort}", _lab.BridgeNamespace, host.Primary.BridgePort, ethtool, ct);
        foreach (var host in new[] { Lb }.Concat(Servers))
            await ThreadedAsync($"{host.Name}:{host.Interface}", host.Namespace, host.Interface, ethtool, ct);

        // UDP: the real servers drop the load before their stack (no socket, no ICMP port unreachable back).
        // TCP: a discard server on each takes the connections; its ACKs go straight back to the client (DSR).
        foreach (var rs in Servers)
        {
            if (_options.Protocol == Protocol.Tcp) _discard.Add(new DiscardServer(rs.Namespace, _options.Port));
            else
                await Commands.RunAsync(["ip", "netns", "exec", rs.Namespace, "nft", "-f", "-"],
                    $"table inet pp_sink {{\n  chain prerouting {{\n    type filter hook prerouting priority -300;\n    udp dport {_options.Port} drop\n  }}\n}}\n", ct);
        }
    }

    private async Task ThreadedAsync(string key, string ns, string device, string ethtool, CancellationToken ct)
    {
        var before = NapiThreads.List();
        await Commands.RunAsync(["ip", "netns", "exec", ns, ethtool, "-K", device, "gro", "on"], ct: ct);
        await Commands.RunAsync(["ip", "netns", "exec", ns, "sh", "-c", $"echo 1 > /sys/class/net/{device}/threaded"], ct: ct);
        _threads[key] = NapiThreads.NewThreadFor(device, before, NapiThreads.List());
    }

    /// <summary>Points the client's route to the VIP at the LB (every configuration but the direct path) or at rs1.</summary>
    public Task RouteAsync(PathConfig config) =>
        Client.ReplaceRouteAsync($"{_lab.Vip}/32", config == PathConfig.Direct ? Servers[0].Address : Lb.Address);

    /// <summary>Adds (or removes) the minimal rule: a netdev ingress chain ahead of Merlin's (priority -500), so while it is
    /// there Merlin's chain never sees the load — b is measured with Merlin's tables loaded, on equal footing.</summary>
    public async Task MinimalRuleAsync(bool present, CancellationToken ct = default)
    {
        var script = present
            ? $$"""
              table netdev {{MinimalTable}} {
                chain ingress {
                  type filter hook ingress device "{{Lb.Interface}}" priority -500; policy accept;
                  ether daddr {{Lb.Mac}} ip daddr {{_lab.Vip}} {{Transport}} dport {{_options.Port}} ether saddr set {{Lb.Mac}} ether daddr set {{Servers[0].Mac}} fwd to "{{Lb.Interface}}"
                }
              }

              """
            : $"delete table netdev {MinimalTable}\n";
        await Commands.RunAsync(["ip", "netns", "exec", Lb.Namespace, "nft", "-f", "-"], script, ct);
    }

    /// <summary>
    /// Programs the LB through Merlin's nftables dataplane: service 0 (the VIP, UDP, mh with port hashing, DSR to
    /// every lab real server), and with <paramref name="services"/> &gt; 1 as many more, each with its own 10
    /// servers from the pool (a Maglev map of M = 1,021 each). Passes repeat until the plan is empty and no
    /// server's MAC is unknown.
    /// </summary>
    public async Task ProgramMerlinAsync(int services, CancellationToken ct = default)
    {
        if (services > 1) await PoolAsync(ct);
        _dataplane ??= new NftablesDataplane(DataplaneOptions, NullLogger<NftablesDataplane>.Instance);
        var dataplane = _dataplane;
        await ReconcileAsync(dataplane, Desired(services), () => dataplane.Issues.Select(i => i.ToString()).ToList(), $"Merlin's dataplane holding {services} service(s) with every MAC known", ct);
    }

    /// <summary>
    /// Programs the LB through Merlin's IPVS dataplane instead (direct routing, the same services as
    /// <see cref="ProgramMerlinAsync"/>): Merlin's nftables tables are removed first, and the VIP is put on the
    /// LB's <c>lo</c> (IPVS takes a packet at local delivery). Needs a kernel with IPVS: the qemu guest here.
    /// </summary>
    public async Task ProgramIpvsAsync(int services, CancellationToken ct = default)
    {
        if (_ipvs is null)
        {
            if (_dataplane is { } nft)
                await ReconcileAsync(nft, new DataplaneState(new Dictionary<ServiceKey, ServiceState>()), () => [], "Merlin's nftables tables removed", ct);
            await Lb.IpAsync("addr", "add", $"{_lab.Vip}/32", "dev", "lo");
            _ipvs = new IpvsDataplane(new IpvsDataplaneOptions { NetworkNamespace = Lb.Namespace, OwnWholeTable = true }, NullLogger<IpvsDataplane>.Instance);
        }
        if (services > 1) await PoolAsync(ct);
        await ReconcileAsync(_ipvs, Desired(services), () => [], $"Merlin's IPVS dataplane holding {services} service(s)", ct);
    }

    /// <summary>Passes until the plan is empty and the dataplane reports no issue.</summary>
    private async Task ReconcileAsync(IDataplane dataplane, DataplaneState desired, Func<IReadOnlyList<string>> issues, string what, CancellationToken ct)
    {
        var passes = 0;
        var last = "";
        await Poll.UntilAsync(async () =>
        {
            passes++;
            var actual = await dataplane.ReadAsync(ct);
            var plan = Planner.Plan(desired, actual);
            if (plan.Count > 0)
            {
                var errors = await dataplane.ApplyAsync(plan, ct);
                if (errors.FirstOrDefault(e => e is not null) is { } error) throw new InvalidOperationException($"apply failed: {error.Message}", error);
            }
            var now = issues();
            last = $"pass {passes}: {plan.Count} operations, {now.Count} issues{(now.Count > 0 ? $", e.g. {now[0]}" : "")}";
            _log(last);
            return plan.Count == 0 && now.Count == 0;
        }, what, TimeSpan.FromMinutes(10), () => last, TimeSpan.FromMilliseconds(200), ct);
    }

    /// <summary>
    /// Puts a hand-made variant of the measured service's rules in place (<paramref name="name"/>), or with null
    /// writes Merlin's rules back as they were listed when the variant went in.
    /// </summary>
    public async Task VariantAsync(string? name, CancellationToken ct = default)
    {
        string script;
        if (name is null)
        {
            if (_listed is null) return;
            script = RuleVariants.Restore(_listed);
            _listed = null;
        }
        else
        {
            _listed ??= await RuleVariants.ListAsync(Lb.Namespace, DataplaneOptions.DsrTable, _lab.Vip.ToString(), _options.Port, Lb.Mac.ToLowerInvariant(), ct);
            script = RuleVariants.Script(name, _listed);
        }
        await Commands.RunAsync(["ip", "netns", "exec", Lb.Namespace, "nft", "-f", "-"], script, ct);
    }

    private string Transport => _options.Protocol == Protocol.Tcp ? "tcp" : "udp";

    private NftablesOptions DataplaneOptions => new()
    {
        HashSeed = HashSeed, Interface = Lb.Interface, NetworkNamespace = Lb.Namespace, ResolveWait = TimeSpan.FromSeconds(5),
    };

    private DataplaneState Desired(int services)
    {
        var config = new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2 };   // mh-port: the flow's port is hashed too
        var port = (ushort)_options.Port;
        var route = new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route };
        var list = new List<ServiceState>
        {
            new(ServiceKey.ForAddress(_lab.Vip, port, _options.Protocol), config,
                Servers.ToDictionary(s => new RealServerKey(s.Address, port), _ => route)),
        };
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var random = new Random(18);
        for (var i = 1; i < services; i++)
        {
            int[] picks;
            do picks = [.. Enumerable.Range(1, PoolSize).OrderBy(_ => random.Next()).Take(10).Order()];
            while (!seen.Add(string.Join(',', picks)));   // every service its own server set: its own Maglev map
            var vip = new IPAddress([198, 19, (byte)(128 + i / 250), (byte)(i % 250 + 1)]);
            list.Add(new ServiceState(ServiceKey.ForAddress(vip, port, _options.Protocol), config,
                picks.ToDictionary(n => new RealServerKey(PoolAddress(n), port), _ => route)));
        }
        return new DataplaneState(list);
    }

    private static IPAddress PoolAddress(int n) => new([198, 19, 0, (byte)n]);

    /// <summary>The pool's 200 server addresses on one host, which answers ARP for them; the LB reaches them on eth0.</summary>
    private async Task PoolAsync(CancellationToken ct)
    {
        if (_poolReady) return;
        var pool = _lab["pool"];
        await pool.IpBatchAsync(Enumerable.Range(1, PoolSize).Select(n => $"addr add {PoolAddress(n)}/32 dev {pool.Interface}"));
        await Lb.IpAsync("route", "add", "198.19.0.0/24", "dev", Lb.Interface);
        _poolReady = true;
    }

    /// <summary>
    /// One measurement: a 0.3 s warm-up (flows pinned, neighbours fresh; for TCP on the connections this measurement
    /// opens, through this configuration's path), then counters and thread times, the fixed-rate load, a wait until
    /// the last packets are through, counters and thread times again.
    /// </summary>
    public async Task<Measurement> MeasureAsync(PathConfig config, int round, CancellationToken ct = default)
    {
        await RouteAsync(config);
        using var generator = Load.Open(Client.Namespace, Target, _options.Flows, _options.Protocol == Protocol.Tcp);
        await Task.Factory.StartNew(() => generator.Run(_options.Rate, TimeSpan.FromSeconds(0.3), ct),
            ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await SettledAsync(ct);

        var lbBefore = await Lb.GetLinkStatsAsync();
        var deliveredBefore = await DeliveredAsync();
        var threadsBefore = ThreadTimes();
        var load = await Task.Factory.StartNew(() => generator.Run(_options.Rate, _options.Duration, ct),
            ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await SettledAsync(ct);
        var threadsAfter = ThreadTimes();
        var lbAfter = await Lb.GetLinkStatsAsync();
        var deliveredAfter = await DeliveredAsync();

        var lbKey = $"{Lb.Name}:{Lb.Interface}";
        var lbNs = threadsAfter[lbKey] - threadsBefore[lbKey];
        var pathNs = threadsAfter.Sum(t => t.Value - threadsBefore[t.Key]);
        var forwarded = config == PathConfig.Direct ? 0 : lbAfter.TxPackets - lbBefore.TxPackets;
        return new Measurement(config, round, load.Sent, load.Refused, forwarded, deliveredAfter - deliveredBefore, lbNs, pathNs, load.Elapsed);
    }

    /// <summary>b: the minimal rule put in place, measured, and taken out again (Merlin's tables stay loaded behind it).</summary>
    public async Task<Measurement> MeasureMinimalRuleAsync(int round, CancellationToken ct = default)
    {
        await MinimalRuleAsync(true, ct);
        try
        {
            return await MeasureAsync(PathConfig.MinimalRule, round, ct);
        }
        finally
        {
            await MinimalRuleAsync(false, ct);
        }
    }

    /// <summary>
    /// Issue 18's packet-path row on its own: rounds of b and c at 1 service, then of b and d at
    /// <see cref="PacketPathOptions.Services"/>; each round's Merlin / minimal-rule ratio of LB CPU per packet.
    /// </summary>
    public static async Task<(IReadOnlyList<double> One, IReadOnlyList<double> Many)> RatiosAsync(PacketPathOptions options, int rounds, Action<string>? log = null, CancellationToken ct = default)
    {
        await using var harness = await CreateAsync(options, log, ct);
        var one = new List<double>();
        var many = new List<double>();
        await harness.ProgramMerlinAsync(1, ct);
        for (var r = 1; r <= rounds; r++)
        {
            var b = await harness.MeasureMinimalRuleAsync(r, ct);
            one.Add((await harness.MeasureAsync(PathConfig.Merlin1, r, ct)).LbNsPerPacket / b.LbNsPerPacket);
        }
        await harness.ProgramMerlinAsync(options.Services, ct);
        for (var r = 1; r <= rounds; r++)
        {
            var b = await harness.MeasureMinimalRuleAsync(rounds + r, ct);
            many.Add((await harness.MeasureAsync(PathConfig.MerlinMany, rounds + r, ct)).LbNsPerPacket / b.LbNsPerPacket);
        }
        return (one, many);
    }

    private Dictionary<string, long> ThreadTimes() => _threads.ToDictionary(t => t.Key, t => NapiThreads.RunTimeNs(t.Value));

    private async Task<long> DeliveredAsync()
    {
        long sum = 0;
        foreach (var rs in Servers) sum += (await rs.GetLinkStatsAsync()).RxPackets;
        return sum;
    }

    /// <summary>
    /// Until the real servers' receive counters (nearly) stop moving: the load's tail is through every ring. Less
    /// than 1 % of a second's load between two reads counts as still: ARP from the LB's managed neighbour
    /// entries (broadcast for the pool's addresses, so every server sees it) never stops.
    /// </summary>
    private async Task SettledAsync(CancellationToken ct)
    {
        long previous = -1;
        var still = Math.Max(50, _options.Rate / 100);
        await Poll.UntilAsync(async () =>
        {
            var now = await DeliveredAsync();
            var settled = previous >= 0 && now - previous < still;
            previous = now;
            return settled;
        }, "the real servers' receive counters to stop moving", TimeSpan.FromSeconds(20), () => $"{previous} received", TimeSpan.FromMilliseconds(200), ct);
    }

    public async ValueTask DisposeAsync()
    {
        _dataplane?.Dispose();   // its netlink sockets must not keep the LB namespace alive
        _ipvs?.Dispose();
        foreach (var d in _discard) d.Dispose();
        await _lab.DisposeAsync();
    }
}
