using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Merlin.Lab;

/// <summary>
/// A throw-away network of Linux network namespaces for real-traffic tests: a bridge in its own namespace
/// and hosts connected to it by veth pairs — a client, load balancers lb1…lbN, real servers rs1…rsM,
/// optionally a router with the client behind it, and extra hosts. Addresses come from 198.18.0.0/15 and
/// 2001:db8::/32 only; nothing is ever run in the root namespace (every command goes through
/// <c>ip netns exec</c>), and no interface is created there.
/// <para>
/// Names carry a per-run prefix <c>ml&lt;6 hex&gt;-&lt;creator PID&gt;-</c>, so parallel labs never collide and
/// <see cref="SweepStaleAsync"/> can remove what a crashed run left (only names of that exact pattern whose
/// creator PID is gone). <see cref="DisposeAsync"/> kills every process in the lab's namespaces (by PID),
/// deletes the namespaces (and with them the veths and bridges) and the lab's temp dir; labs not disposed
/// are torn down when the process exits.
/// </para>
/// </summary>
public sealed partial class Lab : IAsyncDisposable
{
    public const int HttpPort = 80;
    public const int EchoPort = 9000;
    public const int UdpPort = 9001;

    /// <summary>The LAN every host but a routed client is on.</summary>
    public const string LanNetwork = "198.18.0.0/24";
    public const string LanNetwork6 = "2001:db8::/64";

    /// <summary>The client's network when <see cref="LabOptions.Router"/> is set.</summary>
    public const string OutsideNetwork = "198.18.1.0/24";
    public const string OutsideNetwork6 = "2001:db8:1::/64";

    private static readonly ConcurrentDictionary<Lab, byte> Live = new();
    private readonly ConcurrentDictionary<LabProcess, byte> _processes = new();
    private readonly Dictionary<string, LabHost> _byName = new(StringComparer.Ordinal);
    private readonly List<string> _namespaces = [];
    private int _disposed;

    static Lab()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) => TearDownAllOnExit();
    }

    private Lab(LabOptions options)
    {
        Options = options;
        Prefix = $"ml{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3))}-{Environment.ProcessId}-";
        BridgeNamespace = Prefix + "br";
        TempPath = Path.Combine(Path.GetTempPath(), "merlin-lab-" + Prefix.TrimEnd('-'));
        VipsV4 = Enumerable.Range(0, options.VipCount).Select(k => Lan4(100 + k)).ToList();
        VipsV6 = options.IPv6 ? Enumerable.Range(0, options.VipCount).Select(k => Lan6(100 + k)).ToList() : [];
    }

    public LabOptions Options { get; }

    /// <summary>This lab's name prefix, e.g. <c>ml3fa2c1-4242-</c>: every namespace it makes starts with it.</summary>
    public string Prefix { get; }

    /// <summary>The namespace holding the bridge(s) <c>br0</c> (LAN) and <c>br1</c> (the routed client's network).</summary>
    public string BridgeNamespace { get; }

    /// <summary>A directory for this lab's files (configs, logs, health files), deleted at teardown.</summary>
    public string TempPath { get; }

    /// <summary>How long <see cref="CreateAsync"/> took.</summary>
    public TimeSpan SetupTime { get; private set; }

    public LabHost Client { get; private set; } = null!;

    /// <summary>The router (only with <see cref="LabOptions.Router"/>).</summary>
    public LabHost? Router { get; private set; }

    public IReadOnlyList<LabHost> LoadBalancers { get; private set; } = [];

    public IReadOnlyList<LabHost> RealServers { get; private set; } = [];

    public IReadOnlyList<LabHost> ExtraHosts { get; private set; } = [];

    /// <summary>Every host (not the bridge namespace).</summary>
    public IReadOnlyList<LabHost> Hosts { get; private set; } = [];

    /// <summary>The host through which the client reaches the VIPs: the router if there is one, else the client
    /// itself. VIP routes go there, and it is the neighbour whose cache a VIP move must update.</summary>
    public LabHost Gateway => Router ?? Client;

    /// <summary>Host by name: "client", "lb1", "rs2", "router", or an extra host's name.</summary>
    public LabHost this[string name] => _byName.TryGetValue(name, out var h) ? h : throw new KeyNotFoundException($"no lab host named {name}");

    /// <summary>The IPv4 VIPs: 198.18.0.100, 198.18.0.101, …</summary>
    public IReadOnlyList<IPAddress> VipsV4 { get; }

    /// <summary>The IPv6 VIPs: 2001:db8::100, … (empty without IPv6).</summary>
    public IReadOnlyList<IPAddress> VipsV6 { get; }

    /// <summary>Every VIP, IPv4 first.</summary>
    public IReadOnlyList<IPAddress> Vips => [.. VipsV4, .. VipsV6];

    /// <summary>The first IPv4 VIP, 198.18.0.100.</summary>
    public IPAddress Vip => VipsV4[0];

    /// <summary>The first IPv6 VIP, 2001:db8::100 (null without IPv6).</summary>
    public IPAddress? Vip6 => VipsV6.Count > 0 ? VipsV6[0] : null;

    /// <summary>VIP and port as a client target, e.g. 198.18.0.100:80 or [2001:db8::100]:80.</summary>
    public IPEndPoint VipEndpoint(int port = HttpPort, bool ipv6 = false) =>
        new(ipv6 ? Vip6 ?? throw new InvalidOperationException("this lab has no IPv6") : Vip, port);

    /// <summary>Every namespace of this lab (bridge first).</summary>
    public IReadOnlyList<string> Namespaces => _namespaces;

    /// <summary>Processes started in this lab and not yet disposed.</summary>
    public IReadOnlyCollection<LabProcess> Processes => _processes.Keys.ToList();

    /// <summary>Builds a lab. Call <see cref="Require"/> first in a test (it skips or fails when the machine cannot).</summary>
    public static async Task<Lab> CreateAsync(LabOptions? options = null, CancellationToken ct = default)
    {
        options ??= new LabOptions();
        Validate(options);
        await EnsureSweptAsync();
        var clock = Stopwatch.StartNew();
        var lab = new Lab(options);
        Live.TryAdd(lab, 0);
        try
        {
            await lab.BuildAsync(ct);
        }
        catch
        {
            await lab.DisposeAsync();
            throw;
        }
        lab.SetupTime = clock.Elapsed;
        return lab;
    }

    /// <summary>Starts <paramref name="argv"/> inside <paramref name="host"/>'s namespace (see <see cref="LabHost.Start(IEnumerable{string}, LabProcessOptions?)"/>).</summary>
    public LabProcess StartProcess(LabHost host, IReadOnlyList<string> argv, LabProcessOptions? options = null)
    {
        ThrowIfDisposed();
        if (host.Lab != this) throw new ArgumentException("host of another lab", nameof(host));
        if (argv.Count == 0) throw new ArgumentException("empty command", nameof(argv));
        var process = new LabProcess(host, argv, options, p => _processes.TryRemove(p, out _));
        _processes.TryAdd(process, 0);
        if (Volatile.Read(ref _disposed) != 0)
        {
            process.Dispose();
            ThrowIfDisposed();
        }
        return process;
    }

    /// <summary>Runs <paramref name="argv"/> to completion inside <paramref name="host"/>'s namespace.</summary>
    public Task<LabCommandResult> RunAsync(LabHost host, IEnumerable<string> argv, TimeSpan? timeout = null, CancellationToken ct = default) =>
        host.RunAsync(argv, timeout, null, ct);

    /// <summary>Starts the lab server on every real server (in parallel) and waits until all listen.</summary>
    public async Task<IReadOnlyList<LabProcess>> StartServersAsync(LabServerOptions? options = null, CancellationToken ct = default)
    {
        var started = RealServers.Select(h => h.StartServerAsync(options, ct)).ToList();
        try
        {
            return await Task.WhenAll(started);
        }
        catch
        {
            foreach (var t in started.Where(t => t.IsCompletedSuccessfully)) await t.Result.DisposeAsync();
            throw;
        }
    }

    /// <summary>Takes a host's link down or up (its port on the bridge): a cut cable, as the host sees it.</summary>
    public async Task SetLinkAsync(LabHost host, bool up, int interfaceIndex = 0)
    {
        ThrowIfDisposed();
        var port = host.Interfaces[interfaceIndex].BridgePort;
        (await LabCommand.RunAsync(["ip", "-n", BridgeNamespace, "link", "set", port, up ? "up" : "down"])).EnsureSuccess();
    }

    /// <summary>Addresses, routes and neighbours of every host, the bridge's forwarding table, and the tail of
    /// every process's output: for a failure message.</summary>
    public async Task<string> DescribeAsync()
    {
        var sb = new StringBuilder($"lab {Prefix} (temp {TempPath})\n");
        foreach (var h in Hosts)
        {
            var r = await LabCommand.RunAsync(["ip", "netns", "exec", h.Namespace, "sh", "-c",
                "ip -br addr; echo '-- routes'; ip route; ip -6 route 2>/dev/null; echo '-- neighbours'; ip neigh"], timeout: TimeSpan.FromSeconds(10));
            sb.Append($"== {h}\n{r.StandardOutput}{r.StandardError}");
        }
        var fdb = await LabCommand.RunAsync(["ip", "netns", "exec", BridgeNamespace, "bridge", "fdb", "show", "dynamic"], timeout: TimeSpan.FromSeconds(10));
        sb.Append($"== bridge fdb\n{fdb.StandardOutput}");
        foreach (var p in Processes) sb.Append($"== {p} (exited: {p.HasExited})\n{LabCommandResult.Tail(p.Output, 2000)}\n");
        return sb.ToString();
    }

    public override string ToString() => $"lab {Prefix}";

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    // ---- addressing ----

    internal static IPAddress Lan4(int octet) => new([198, 18, 0, (byte)octet]);
    internal static IPAddress Lan6(int octet) => IPAddress.Parse($"2001:db8::{octet}");
    internal static IPAddress Out4(int octet) => new([198, 18, 1, (byte)octet]);
    internal static IPAddress Out6(int octet) => IPAddress.Parse($"2001:db8:1::{octet}");

    /// <summary>Locally administered, and readable: 02:00 followed by the IPv4 address's bytes.</summary>
    internal static string MacFor(IPAddress v4) => "02:00:" + string.Join(':', v4.GetAddressBytes().Select(b => b.ToString("x2")));

    private sealed record IfPlan(string Name, string Bridge, string BridgePort, IPAddress V4, int Len4, IPAddress? V6, int Len6, IPAddress? Gateway4, IPAddress? Gateway6);

    private sealed record HostPlan(string Name, LabRole Role, IReadOnlyList<IfPlan> Ifs)
    {
        public string Namespace(Lab lab) => lab.Prefix + Name;
    }

    private static void Validate(LabOptions o)
    {
        if (o.LoadBalancers is < 0 or > 39) throw new ArgumentOutOfRangeException(nameof(o), "LoadBalancers must be 0…39");
        if (o.RealServers is < 0 or > 49) throw new ArgumentOutOfRangeException(nameof(o), "RealServers must be 0…49");
        if (o.VipCount is < 1 or > 50) throw new ArgumentOutOfRangeException(nameof(o), "VipCount must be 1…50");
        if (o.ExtraHosts.Count > 50) throw new ArgumentOutOfRangeException(nameof(o), "at most 50 extra hosts");
        var reserved = new HashSet<string>(StringComparer.Ordinal) { "br", "client", "router" };
        foreach (var n in o.ExtraHosts)
        {
            if (n.Length is 0 or > 13 || !n.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c)))
                throw new ArgumentException($"extra host name '{n}' must be 1–13 of [a-z0-9]", nameof(o));
            if (reserved.Contains(n) || System.Text.RegularExpressions.Regex.IsMatch(n, "^(lb|rs)[0-9]+$"))
                throw new ArgumentException($"extra host name '{n}' is taken by the lab", nameof(o));
        }
        if (o.ExtraHosts.Distinct(StringComparer.Ordinal).Count() != o.ExtraHosts.Count) throw new ArgumentException("extra host names repeat", nameof(o));
    }

    private List<HostPlan> Plan()
    {
        var o = Options;
        var v6 = o.IPv6;
        IPAddress? gw4 = o.Router ? Lan4(1) : null;
        IPAddress? gw6 = o.Router && v6 ? Lan6(1) : null;
        IfPlan Lan(string port, int octet) => new("eth0", "br0", port, Lan4(octet), 24, v6 ? Lan6(octet) : null, 64, gw4, gw6);

        var plans = new List<HostPlan>();
        if (o.Router)
        {
            plans.Add(new HostPlan("router", LabRole.Router,
            [
                new IfPlan("eth0", "br0", "router", Lan4(1), 24, v6 ? Lan6(1) : null, 64, null, null),
                new IfPlan("eth1", "br1", "router-1", Out4(1), 24, v6 ? Out6(1) : null, 64, null, null),
            ]));
            plans.Add(new HostPlan("client", LabRole.Client,
                [new IfPlan("eth0", "br1", "client", Out4(2), 24, v6 ? Out6(2) : null, 64, Out4(1), v6 ? Out6(1) : null)]));
        }
        else
        {
            plans.Add(new HostPlan("client", LabRole.Client, [Lan("client", 2)]));
        }
        for (var i = 1; i <= o.LoadBalancers; i++) plans.Add(new HostPlan($"lb{i}", LabRole.LoadBalancer, [Lan($"lb{i}", 10 + i)]));
        for (var i = 1; i <= o.RealServers; i++) plans.Add(new HostPlan($"rs{i}", LabRole.RealServer, [Lan($"rs{i}", 50 + i)]));
        for (var k = 0; k < o.ExtraHosts.Count; k++) plans.Add(new HostPlan(o.ExtraHosts[k], LabRole.Other, [Lan(o.ExtraHosts[k], 200 + k)]));
        return plans;
    }

    private async Task BuildAsync(CancellationToken ct)
    {
        var plans = Plan();
        _namespaces.Add(BridgeNamespace);
        _namespaces.AddRange(plans.Select(p => p.Namespace(this)));
        Directory.CreateDirectory(TempPath);

        // 1. All namespaces in one go.
        var add = string.Join('\n', _namespaces.Select(n => $"netns add {n}")) + "\n";
        (await LabCommand.RunAsync(["ip", "-batch", "-"], add, ct: ct)).EnsureSuccess();

        // 2. The bridges, and every veth pair: created in the bridge namespace with its host end placed
        //    straight into the host's namespace (no interface ever exists in the root namespace).
        var bridge = new StringBuilder("set -e\n");
        bridge.Append("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6\necho 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6\n");
        bridge.Append("ip -batch - <<'EOF'\n");
        foreach (var br in plans.SelectMany(p => p.Ifs).Select(i => i.Bridge).Distinct().Order(StringComparer.Ordinal))
        {
            // No STP, no forwarding delay (ports forward at once), and multicast flooded (IPv6 neighbour
            // discovery must not depend on snooping).
            bridge.Append($"link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\nlink set {br} up\n");
        }
        foreach (var p in plans)
        {
            foreach (var i in p.Ifs)
            {
                bridge.Append($"link add {i.BridgePort} type veth peer name {i.Name} address {MacFor(i.V4)} netns {p.Namespace(this)}\n");
                bridge.Append($"link set {i.BridgePort} master {i.Bridge} up\n");
            }
        }
        bridge.Append("EOF\n");
        (await LabCommand.RunAsync(["ip", "netns", "exec", BridgeNamespace, "sh", "-c", bridge.ToString()], ct: ct)).EnsureSuccess();

        // 3. Every host configures itself (sysctls, addresses, routes) in one shell each, in parallel, and
        //    reports its interfaces as JSON.
        var results = await Task.WhenAll(plans.Select(p =>
            LabCommand.RunAsync(["ip", "netns", "exec", p.Namespace(this), "sh", "-c", HostScript(p)], ct: ct)));
        var hosts = new List<LabHost>();
        for (var k = 0; k < plans.Count; k++)
        {
            var plan = plans[k];
            var json = results[k].EnsureSuccess().StandardOutput;
            hosts.Add(new LabHost(this, plan.Name, plan.Role, plan.Namespace(this), ReadInterfaces(plan, json)));
        }

        Hosts = hosts;
        foreach (var h in hosts) _byName[h.Name] = h;
        Client = _byName["client"];
        Router = _byName.GetValueOrDefault("router");
        LoadBalancers = hosts.Where(h => h.Role == LabRole.LoadBalancer).ToList();
        RealServers = hosts.Where(h => h.Role == LabRole.RealServer).ToList();
        ExtraHosts = hosts.Where(h => h.Role == LabRole.Other).ToList();
    }

    private string HostScript(HostPlan p)
    {
        var o = Options;
        var sb = new StringBuilder("set -e\n");
        void W(string key, int value) => sb.Append($"echo {value} > /proc/sys/net/{key}\n");
        var scopes = new[] { "all", "default" }.Concat(p.Ifs.Select(i => i.Name)).ToList();
        foreach (var s in scopes)
        {
            // Predictable forwarding for DSR/NAT experiments: no reverse-path filter, no ICMP redirects
            // taken (a redirect could teach the client a path around the load balancer).
            W($"ipv4/conf/{s}/rp_filter", 0);
            W($"ipv4/conf/{s}/accept_redirects", 0);
            if (o.IPv6)
            {
                // No duplicate address detection: addresses are usable at once (no 1 s "tentative" state).
                W($"ipv6/conf/{s}/accept_dad", 0);
                W($"ipv6/conf/{s}/accept_redirects", 0);
            }
            else
            {
                W($"ipv6/conf/{s}/disable_ipv6", 1);
            }
        }
        switch (p.Role)
        {
            case LabRole.RealServer when o.VipsOnRealServers:
                // Direct server return: the VIP on lo must never be announced or answered for on eth0.
                W("ipv4/conf/all/arp_ignore", 1);
                W("ipv4/conf/all/arp_announce", 2);
                break;
            case LabRole.LoadBalancer or LabRole.Router:
                W("ipv4/ip_forward", 1);
                if (o.IPv6) W("ipv6/conf/all/forwarding", 1);
                foreach (var s in scopes)
                {
                    W($"ipv4/conf/{s}/send_redirects", 0);
                    // An IPv6 address added (without nodad, DAD being off) is announced by the kernel with an
                    // unsolicited neighbour advertisement: how a moved IPv6 VIP reaches neighbours' caches.
                    if (o.IPv6) W($"ipv6/conf/{s}/ndisc_notify", 1);
                }
                break;
        }

        sb.Append("ip -batch - <<'EOF'\nlink set lo up\n");
        foreach (var i in p.Ifs)
        {
            sb.Append($"link set {i.Name} up\naddr add {i.V4}/{i.Len4} dev {i.Name}\n");
            if (i.V6 is not null) sb.Append($"addr add {i.V6}/{i.Len6} dev {i.Name} nodad\n");
            if (i.Gateway4 is not null) sb.Append($"route add 0.0.0.0/0 via {i.Gateway4}\n");
            if (i.Gateway6 is not null) sb.Append($"route add ::/0 via {i.Gateway6}\n");
        }
        if (p.Role == LabRole.RealServer && o.VipsOnRealServers)
        {
            foreach (var v in VipsV4) sb.Append($"addr add {v}/32 dev lo\n");
            foreach (var v in VipsV6) sb.Append($"addr add {v}/128 dev lo nodad\n");
        }
        sb.Append("EOF\nip -j addr show\n");
        return sb.ToString();
    }

    private static List<LabInterface> ReadInterfaces(HostPlan plan, string json)
    {
        using var doc = JsonDocument.Parse(json);
        var list = new List<LabInterface>();
        foreach (var i in plan.Ifs)
        {
            var link = doc.RootElement.EnumerateArray().FirstOrDefault(e => e.GetProperty("ifname").GetString() == i.Name);
            if (link.ValueKind != JsonValueKind.Object) throw new InvalidOperationException($"{plan.Name}: no interface {i.Name} in `ip -j addr`: {json}");
            var mac = link.GetProperty("address").GetString() ?? throw new InvalidOperationException($"{plan.Name}/{i.Name} has no MAC");
            var addresses = link.GetProperty("addr_info").EnumerateArray().Select(a => a.GetProperty("local").GetString()).ToHashSet(StringComparer.Ordinal);
            if (!addresses.Contains(i.V4.ToString()) || (i.V6 is not null && !addresses.Contains(i.V6.ToString())))
                throw new InvalidOperationException($"{plan.Name}/{i.Name} lacks its addresses: {string.Join(", ", addresses)}");
            list.Add(new LabInterface(i.Name, mac, i.V4, i.Len4, i.V6, i.Len6, i.Bridge, i.BridgePort));
        }
        return list;
    }
}
