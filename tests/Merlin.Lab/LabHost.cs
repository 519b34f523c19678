using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Merlin.Lab;

public enum LabRole
{
    Client,
    LoadBalancer,
    RealServer,
    Router,
    Other,
}

/// <summary>
/// One interface of a lab host: a veth whose other end (<see cref="BridgePort"/>) is a port of a bridge in
/// the lab's bridge namespace.
/// </summary>
public sealed record LabInterface(string Name, string Mac, IPAddress Address, int PrefixLength, IPAddress? Address6, int PrefixLength6, string Bridge, string BridgePort)
{
    /// <summary>The connected IPv4 network, e.g. 198.18.0.0/24.</summary>
    public string Network => $"{new IPNetwork(Address, PrefixLength).BaseAddress}/{PrefixLength}";
}

/// <summary>A neighbour (ARP / NDP) table entry as <c>ip -j neigh</c> reports it.</summary>
public sealed record LabNeighbour(IPAddress Address, string Device, string? Mac, IReadOnlyList<string> State);

/// <summary>Counters of an interface, as <c>ip -j -s link</c> reports them.</summary>
public sealed record LabLinkStats(long RxPackets, long RxBytes, long TxPackets, long TxBytes);

/// <summary>
/// A host of the lab: its own network namespace with one interface (two for the router) on the lab bridge.
/// Everything a test runs for it runs inside its namespace, through <c>ip netns exec</c>.
/// </summary>
public sealed partial class LabHost
{
    internal LabHost(Lab lab, string name, LabRole role, string ns, IReadOnlyList<LabInterface> interfaces)
    {
        Lab = lab;
        Name = name;
        Role = role;
        Namespace = ns;
        Interfaces = interfaces;
    }

    public Lab Lab { get; }

    /// <summary>Short name within the lab: client, lb1, rs2, router, or an extra host's name.</summary>
    public string Name { get; }

    public LabRole Role { get; }

    /// <summary>The network namespace, e.g. <c>ml3fa2c1-4242-rs2</c>.</summary>
    public string Namespace { get; }

    public IReadOnlyList<LabInterface> Interfaces { get; }

    /// <summary>The interface on the lab LAN (198.18.0.0/24), or the client's only interface.</summary>
    public LabInterface Primary => Interfaces[0];

    /// <summary>Name of the primary interface inside the namespace (always <c>eth0</c>).</summary>
    public string Interface => Primary.Name;

    /// <summary>MAC of the primary interface, lower case with colons, as <c>ip -j link</c> reports it.</summary>
    public string Mac => Primary.Mac;

    public IPAddress Address => Primary.Address;

    /// <summary>IPv6 address (null when the lab was made without IPv6).</summary>
    public IPAddress? Address6 => Primary.Address6;

    /// <summary><see cref="Address"/> (or <see cref="Address6"/> when <paramref name="ipv6"/>) with a port.</summary>
    public IPEndPoint Endpoint(int port, bool ipv6 = false) =>
        new(ipv6 ? Address6 ?? throw new InvalidOperationException("this lab has no IPv6") : Address, port);

    public override string ToString() => $"{Name} ({Address}, {Mac}, netns {Namespace})";

    // ---- running things inside the namespace ----

    /// <summary>Runs <paramref name="argv"/> in this namespace to completion and returns its output and exit code
    /// (killed and <see cref="TimeoutException"/> after <paramref name="timeout"/>, default 30 s).</summary>
    public Task<LabCommandResult> RunAsync(IEnumerable<string> argv, TimeSpan? timeout = null, string? stdin = null, CancellationToken ct = default)
    {
        Lab.ThrowIfDisposed();
        var list = argv.ToList();
        if (list.Count == 0) throw new ArgumentException("empty command", nameof(argv));
        return LabCommand.RunAsync(["ip", "netns", "exec", Namespace, .. list], stdin, timeout, ct);
    }

    public Task<LabCommandResult> RunAsync(params string[] argv) => RunAsync(argv, null, null, default);

    /// <summary>Like <see cref="RunAsync(IEnumerable{string}, TimeSpan?, string?, CancellationToken)"/> but throws
    /// <see cref="LabCommandException"/> on a non-zero exit code.</summary>
    public async Task<LabCommandResult> ExecAsync(IEnumerable<string> argv, TimeSpan? timeout = null, string? stdin = null, CancellationToken ct = default) =>
        (await RunAsync(argv, timeout, stdin, ct)).EnsureSuccess();

    public Task<LabCommandResult> ExecAsync(params string[] argv) => ExecAsync(argv, null, null, default);

    /// <summary>Runs a <c>sh -c</c> script in this namespace; throws on a non-zero exit code.</summary>
    public Task<LabCommandResult> ShellAsync(string script, TimeSpan? timeout = null, CancellationToken ct = default) =>
        ExecAsync(["sh", "-c", script], timeout, null, ct);

    /// <summary>Starts a long-running program in this namespace. Dispose the handle (or the lab) to stop it.</summary>
    public LabProcess Start(IEnumerable<string> argv, LabProcessOptions? options = null) => Lab.StartProcess(this, argv.ToList(), options);

    public LabProcess Start(params string[] argv) => Start(argv, null);

    /// <summary><c>ip -n NS …</c>: an iproute2 command applied to this namespace; throws on failure.</summary>
    public async Task<LabCommandResult> IpAsync(params string[] args)
    {
        Lab.ThrowIfDisposed();
        return (await LabCommand.RunAsync(["ip", "-n", Namespace, .. args])).EnsureSuccess();
    }

    /// <summary>Several iproute2 commands (one per line, e.g. "addr add …") in one <c>ip -batch</c>.</summary>
    public async Task<LabCommandResult> IpBatchAsync(IEnumerable<string> lines, bool ignoreErrors = false)
    {
        Lab.ThrowIfDisposed();
        var text = string.Join('\n', lines) + "\n";
        string[] argv = ignoreErrors ? ["ip", "-force", "-n", Namespace, "-batch", "-"] : ["ip", "-n", Namespace, "-batch", "-"];
        var r = await LabCommand.RunAsync(argv, text);
        return ignoreErrors ? r : r.EnsureSuccess();
    }

    [GeneratedRegex(@"^[a-z0-9_]+([./][a-zA-Z0-9_\-]+)+$")]
    private static partial Regex SysctlKey();

    /// <summary>Sets a sysctl inside this namespace (<c>net.ipv4.conf.all.arp_ignore</c> style or with slashes).</summary>
    public async Task SetSysctlAsync(string key, string value)
    {
        var path = SysctlPath(key);
        if (value.Any(c => c is '\'' or '\n' or '\\')) throw new ArgumentException("unsupported sysctl value", nameof(value));
        await ShellAsync($"echo '{value}' > '{path}'");
    }

    public async Task<string> GetSysctlAsync(string key) => (await ExecAsync("cat", SysctlPath(key))).StandardOutput.Trim();

    private static string SysctlPath(string key)
    {
        if (!SysctlKey().IsMatch(key)) throw new ArgumentException($"not a sysctl key: {key}", nameof(key));
        return "/proc/sys/" + (key.Contains('/') ? key : key.Replace('.', '/'));
    }

    /// <summary>The neighbour entry for <paramref name="address"/> on any interface, or null when there is none.</summary>
    public async Task<LabNeighbour?> GetNeighbourAsync(IPAddress address)
    {
        var r = await IpAsync("-j", "neigh", "show", "to", address.ToString());
        return ParseNeighbours(r.StandardOutput).FirstOrDefault(n => n.Address.Equals(address));
    }

    /// <summary>Packet and byte counters of an interface (default the primary one): e.g. to prove that replies
    /// bypass a load balancer in direct server return (its transmit count does not grow with the replies).</summary>
    public async Task<LabLinkStats> GetLinkStatsAsync(string? interfaceName = null)
    {
        var r = await IpAsync("-j", "-s", "link", "show", "dev", interfaceName ?? Interface);
        using var doc = JsonDocument.Parse(r.StandardOutput);
        var stats = doc.RootElement[0].GetProperty("stats64");
        var rx = stats.GetProperty("rx");
        var tx = stats.GetProperty("tx");
        return new LabLinkStats(rx.GetProperty("packets").GetInt64(), rx.GetProperty("bytes").GetInt64(),
            tx.GetProperty("packets").GetInt64(), tx.GetProperty("bytes").GetInt64());
    }

    /// <summary>Replaces (adds) a route in this namespace, e.g. <c>("198.18.1.0/24", lb1.Address)</c>.</summary>
    public Task ReplaceRouteAsync(string prefix, IPAddress via) => IpAsync("route", "replace", prefix, "via", via.ToString());

    internal static IReadOnlyList<LabNeighbour> ParseNeighbours(string json)
    {
        if (string.IsNullOrWhiteSpace(json)) return [];
        using var doc = JsonDocument.Parse(json);
        var list = new List<LabNeighbour>();
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            if (!e.TryGetProperty("dst", out var dst) || !IPAddress.TryParse(dst.GetString(), out var a)) continue;
            var dev = e.TryGetProperty("dev", out var d) ? d.GetString() ?? "" : "";
            var mac = e.TryGetProperty("lladdr", out var l) ? l.GetString() : null;
            var state = e.TryGetProperty("state", out var s) && s.ValueKind == JsonValueKind.Array
                ? s.EnumerateArray().Select(x => x.GetString() ?? "").ToList()
                : [];
            list.Add(new LabNeighbour(a, dev, mac, state));
        }
        return list;
    }
}
