using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Merlin.Lab;

/// <summary>
/// BIRD 2 on the lab's router as the upstream router of a BGP fleet: it accepts sessions from any load balancer
/// on the LAN (a neighbour range, so a node that joins needs no router change), imports only host routes of
/// the VIP range, and installs equal routes from several nodes as one multipath (ECMP) route in the kernel,
/// which hashes flows over the next hops by L3+L4 (fib_multipath_hash_policy=1).
/// </summary>
public sealed class LabBird : IAsyncDisposable
{
    public const uint RouterAsn = 64512;
    /// <summary>The AS every load balancer of the lab fleet shares.</summary>
    public const uint FleetAsn = 64513;

    private LabBird(LabHost router, LabProcess process, string control)
    {
        Router = router;
        Process = process;
        ControlSocket = control;
    }

    public LabHost Router { get; }

    public LabProcess Process { get; }

    public string ControlSocket { get; }

    /// <summary>The configuration: the lab's VIPs are 198.18.0.100… and 2001:db8::100…, inside the LAN prefixes.</summary>
    public static string Config(IPAddress routerId, int holdSeconds = 9) => $$"""
        router id {{routerId}};
        log stderr all;
        protocol device { }
        define VIPS4 = [ 198.18.0.0/24{32,32} ];
        define VIPS6 = [ 2001:db8::/64{128,128} ];
        protocol kernel k4 { ipv4 { import none; export where source = RTS_BGP; }; merge paths on limit 16; }
        protocol kernel k6 { ipv6 { import none; export where source = RTS_BGP; }; merge paths on limit 16; }
        template bgp lb { local as {{RouterAsn}}; hold time {{holdSeconds}}; keepalive time {{Math.Max(1, holdSeconds / 3)}}; connect retry time 1; error wait time 1, 5; }
        protocol bgp lbs4 from lb { neighbor range 198.18.0.0/24 as {{FleetAsn}}; dynamic name "lb4_"; ipv4 { import where net ~ VIPS4; export none; }; }
        protocol bgp lbs6 from lb { neighbor range 2001:db8::/64 as {{FleetAsn}}; dynamic name "lb6_"; ipv6 { import where net ~ VIPS6; export none; }; }
        """;

    /// <summary>Starts BIRD in the foreground on the lab's router (its log in the process's output) and waits until it runs.</summary>
    public static async Task<LabBird> StartAsync(Lab lab, CancellationToken ct = default)
    {
        var router = lab.Router ?? throw new InvalidOperationException("the lab has no router (LabOptions.Router)");
        var bird = Merlin.Testing.Requires.FindOnPath("bird") ?? "/usr/sbin/bird";
        var dir = Path.Combine(lab.TempPath, "bird");
        Directory.CreateDirectory(dir);
        var conf = Path.Combine(dir, "bird.conf");
        await File.WriteAllTextAsync(conf, Config(router.Address), ct);
        // L3+L4 hashing over the next hops: with the default (L3 only) one client's flows would all take one node.
        await router.SetSysctlAsync("net.ipv4.fib_multipath_hash_policy", "1");
        if (lab.Options.IPv6) await router.SetSysctlAsync("net.ipv6.fib_multipath_hash_policy", "1");
        var control = Path.Combine(dir, "bird.ctl");
        var process = router.Start(bird, "-f", "-c", conf, "-s", control, "-P", Path.Combine(dir, "bird.pid"));
        var result = new LabBird(router, process, control);
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!(await result.BirdcAsync("show", "status")).Contains("Daemon is up and running", StringComparison.Ordinal))
            {
                if (process.HasExited) throw new InvalidOperationException($"bird exited with code {process.ExitCode}:\n{process.Output}");
                if (clock.Elapsed > TimeSpan.FromSeconds(15)) throw new TimeoutException($"bird did not come up:\n{process.Output}");
                await Task.Delay(100, ct);
            }
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
        return result;
    }

    /// <summary><c>birdc -s CONTROL ARGS…</c> in the router's namespace; its output (empty when BIRD is not reachable).</summary>
    public async Task<string> BirdcAsync(params string[] args)
    {
        var r = await Router.RunAsync(["birdc", "-s", ControlSocket, .. args], TimeSpan.FromSeconds(10));
        return r.StandardOutput;
    }

    /// <summary>The next hops the router's kernel has for <paramref name="vip"/> from BGP (one, several for ECMP, or none).</summary>
    public async Task<IReadOnlyList<IPAddress>> NextHopsAsync(IPAddress vip)
    {
        var v6 = vip.AddressFamily == AddressFamily.InterNetworkV6;
        var r = await Router.RunAsync([.. (string[])["ip", "-j"], .. (v6 ? (string[])["-6"] : []), "route", "show", $"{vip}/{(v6 ? 128 : 32)}", "proto", "bird"], TimeSpan.FromSeconds(10));
        r.EnsureSuccess();
        return ParseNextHops(r.StandardOutput);
    }

    /// <summary>
    /// <c>ip -j route</c> has two shapes: one path is <c>{"gateway": …}</c>, several are <c>{"nexthops": [{"gateway": …}, …]}</c>.
    /// </summary>
    public static IReadOnlyList<IPAddress> ParseNextHops(string json)
    {
        if (string.IsNullOrWhiteSpace(json)) return [];
        using var doc = JsonDocument.Parse(json);
        var hops = new List<IPAddress>();
        foreach (var route in doc.RootElement.EnumerateArray())
        {
            if (route.TryGetProperty("gateway", out var g) && IPAddress.TryParse(g.GetString(), out var a)) hops.Add(a);
            if (route.TryGetProperty("nexthops", out var many))
                foreach (var h in many.EnumerateArray())
                    if (h.TryGetProperty("gateway", out var hg) && IPAddress.TryParse(hg.GetString(), out var ha)) hops.Add(ha);
        }
        return hops.OrderBy(h => h.ToString(), StringComparer.Ordinal).ToList();
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}
