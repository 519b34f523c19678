using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using Merlin.Linux;

namespace Merlin.Ipvs.Tests;

/// <summary>
/// A small throw-away network for traffic through IPVS in the qemu guest: a bridge <c>br0</c> in a namespace of
/// its own, and one namespace per host — client (198.18.0.2), lb (198.18.0.11), rs1, rs2, … (198.18.0.51 …) —
/// each with an <c>eth0</c> on the bridge. The VIP 198.18.0.100 sits on every real server's <c>lo</c> with
/// arp_ignore=1 / arp_announce=2, as direct routing needs; it is also on lb's <c>lo</c> (IPVS takes packets in
/// LOCAL_IN, so the VIP must be local there), and the client routes it via lb. IPv6 is off (no neighbour discovery chatter in the
/// counters). Names carry a per-run prefix (<c>mi&lt;6 hex&gt;-</c>), so runs never collide; <see cref="Dispose"/>
/// deletes the namespaces, and their veths and bridge with them.
/// <para>
/// Lean on purpose, for emulation: the topology is a few <c>ip -batch</c> runs, and sysctls and counters are read
/// and written from a thread inside the namespace, with no process per host. (tests/Merlin.Lab does much more —
/// processes in namespaces, VIP moves — and brings the daemon and CLI along.)
/// </para>
/// </summary>
internal sealed class TrafficLab : IDisposable
{
    public static readonly IPAddress Vip = IPAddress.Parse("198.18.0.100");

    public sealed record Host(string Name, string Namespace, IPAddress Address);

    private readonly List<string> _namespaces = [];

    private TrafficLab(int realServers)
    {
        Prefix = $"mi{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3))}-";
        Bridge = Prefix + "br";
        Client = new Host("client", Prefix + "client", IPAddress.Parse("198.18.0.2"));
        Lb = new Host("lb", Prefix + "lb", IPAddress.Parse("198.18.0.11"));
        RealServers = Enumerable.Range(1, realServers).Select(i => new Host($"rs{i}", $"{Prefix}rs{i}", IPAddress.Parse($"198.18.0.{50 + i}"))).ToList();
    }

    public string Prefix { get; }
    public string Bridge { get; }
    public Host Client { get; }
    public Host Lb { get; }
    public IReadOnlyList<Host> RealServers { get; }
    public IEnumerable<Host> Hosts => [Client, Lb, .. RealServers];

    public static TrafficLab Create(int realServers)
    {
        var lab = new TrafficLab(realServers);
        try
        {
            lab.Build();
            return lab;
        }
        catch
        {
            lab.Dispose();
            throw;
        }
    }

    private void Build()
    {
        var all = new[] { Bridge }.Concat(Hosts.Select(h => h.Namespace)).ToList();
        foreach (var ns in all)
        {
            Ip(null, $"netns add {ns}");
            _namespaces.Add(ns);
            Sysctls(ns, ("ipv6/conf/all/disable_ipv6", 1), ("ipv6/conf/default/disable_ipv6", 1));
        }

        // Each veth is made in the bridge's namespace with its host end put straight into the host's namespace.
        Ip(Bridge, string.Join('\n', [
            "link add br0 type bridge stp_state 0 forward_delay 0",
            "link set br0 up",
            .. Hosts.SelectMany(h => new[] { $"link add {h.Name} type veth peer name eth0 netns {h.Namespace}", $"link set {h.Name} master br0 up" })]));

        foreach (var h in Hosts)
        {
            Sysctls(h.Namespace, ("ipv4/conf/all/rp_filter", 0), ("ipv4/conf/default/rp_filter", 0), ("ipv4/conf/all/accept_redirects", 0));
            var lines = new List<string> { "link set lo up", "link set eth0 up", $"addr add {h.Address}/24 dev eth0" };
            if (h == Lb) lines.Add($"addr add {Vip}/32 dev lo");
            if (h == Client) lines.Add($"route add {Vip}/32 via {Lb.Address}");
            if (RealServers.Contains(h))
            {
                // The VIP is theirs to answer on, but never to announce or to answer ARP for on eth0.
                Sysctls(h.Namespace, ("ipv4/conf/all/arp_ignore", 1), ("ipv4/conf/all/arp_announce", 2));
                lines.Add($"addr add {Vip}/32 dev lo");
            }
            Ip(h.Namespace, string.Join('\n', lines));
        }
    }

    /// <summary>Byte and packet counters of a host's eth0, from /proc/net/dev as the namespace sees it.</summary>
    public static (long RxBytes, long RxPackets, long TxBytes, long TxPackets) Counters(Host host)
    {
        // Opened in the namespace, read here: the file keeps the namespace it was opened in. thread-self, not
        // self: /proc/self/net is the namespace of the process's main thread.
        using var file = NetworkNamespace.OpenFile(host.Namespace, "/proc/thread-self/net/dev", FileMode.Open, FileAccess.Read);
        using var reader = new StreamReader(new FileStream(file, FileAccess.Read, bufferSize: 0));
        var line = reader.ReadToEnd().Split('\n').Select(l => l.Trim()).Single(l => l.StartsWith("eth0:", StringComparison.Ordinal));
        var f = line["eth0:".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse).ToArray();
        return (f[0], f[1], f[8], f[9]);
    }

    /// <summary>Addresses, routes and neighbours of every host: for a failure message.</summary>
    public string Describe() =>
        string.Join('\n', Hosts.Select(h =>
            $"== {h.Name} ({h.Namespace})\n{Ip(h.Namespace, "-br addr", check: false)}{Ip(h.Namespace, "route", check: false)}{Ip(h.Namespace, "neigh", check: false)}"));

    public void Dispose()
    {
        foreach (var ns in Enumerable.Reverse(_namespaces))
        {
            try
            {
                Ip(null, $"netns del {ns}", check: false);
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"traffic lab: deleting namespace {ns}: {e.Message}");
            }
        }
        _namespaces.Clear();
    }

    private static void Sysctls(string ns, params (string Key, int Value)[] settings)
    {
        // Opened in the namespace, written here: a /proc/sys/net file keeps the namespace it was opened in.
        foreach (var (key, value) in settings)
        {
            using var file = NetworkNamespace.OpenFile(ns, $"/proc/sys/net/{key}", FileMode.Truncate, FileAccess.Write);
            RandomAccess.Write(file, System.Text.Encoding.ASCII.GetBytes(value.ToString(System.Globalization.CultureInfo.InvariantCulture)), 0);
        }
    }

    /// <summary>
    /// <c>ip [-n ns] …</c>: one command, or several lines through <c>-batch</c>; 30 s at most (then killed by
    /// its PID). Returns its output; throws on failure when <paramref name="check"/>.
    /// </summary>
    private static string Ip(string? ns, string commands, bool check = true)
    {
        var batch = commands.Contains('\n');
        var psi = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = batch };
        if (ns is not null)
        {
            psi.ArgumentList.Add("-n");
            psi.ArgumentList.Add(ns);
        }
        if (batch)
        {
            psi.ArgumentList.Add("-batch");
            psi.ArgumentList.Add("-");
        }
        else
        {
            foreach (var a in commands.Split(' ', StringSplitOptions.RemoveEmptyEntries)) psi.ArgumentList.Add(a);
        }
        using var process = Process.Start(psi)!;
        if (batch)
        {
            process.StandardInput.Write(commands + "\n");
            process.StandardInput.Close();
        }
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(30_000))
        {
            process.Kill();
            throw new TimeoutException($"ip {(ns is null ? "" : $"-n {ns} ")}{commands}: no exit within 30 s");
        }
        if (check && process.ExitCode != 0)
            throw new InvalidOperationException($"ip {(ns is null ? "" : $"-n {ns} ")}{(batch ? "-batch" : "")}: exit {process.ExitCode}: {error.Result}\n{commands}");
        return output.Result;
    }
}
