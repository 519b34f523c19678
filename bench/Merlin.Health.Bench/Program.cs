using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Lab;
using Merlin.Linux;
using Merlin.Testing;
using Merlin.Contracts;

// Health-check load: the real daemon, in its own process (so its CPU is its own), checks N HTTP servers
// that this process serves on loopback (127.0.0.1, one port each), every period. The rate is the
// daemon's own count of checks (merlin_health_checks_total); the CPU is the daemon's user+system time
// from /proc over the same window, as a share of one core.
// The references run on the same targets at the same rate, each in its own process measured the same way:
// a bare prober that opens a connection per check, and one that keeps a connection per server alive.
// --lab: the daemon runs in a lab load balancer's namespace and the servers listen on lab real servers'
// addresses (rs1…rsN, each its own namespace, reached over veths and the lab's bridge) instead of loopback;
// --lab-servers N (default 4) spreads the N targets over that many real servers. --wire napi (with --lab):
// every bridge port hands what it receives to a NAPI thread of its own (veth GRO on, threaded NAPI), as a
// NIC and a switch would take it off the sender's CPU; by default a veth delivers a packet — through the
// bridge and into the server's TCP — inside the sender's send(), so the daemon pays for the servers' receive.
// Usage: dotnet run -c Release --project bench/Merlin.Health.Bench -- [--servers 2000] [--period 200ms]
//        [--seconds 30] [--warmup 30] [--no-reference] [--keepalive false] [--lab] [--lab-servers 4] [--wire napi]
if (args.Length > 0 && args[0] == "--bare-prober") return await BareProber.MainAsync(args);
var servers = Arg("--servers", 2000);
var periodMs = Arg("--period", 200);
var seconds = Arg("--seconds", 30);
var warmup = Arg("--warmup", 30);
Console.WriteLine($"{servers:N0} servers checked every {periodMs} ms: {servers * 1000.0 / periodMs:N0} checks/s asked for; measuring {seconds} s after {warmup} s of warm-up");

using var dir = new TempDir("health-bench");
await using var lab = args.Contains("--lab") ? await CreateLabAsync(Arg("--lab-servers", 4)) : null;
var lb = lab?.LoadBalancers[0];
if (lab is not null && args.Contains("--wire")) await ThreadedWireAsync(lab, args[Array.IndexOf(args, "--wire") + 1]);
// Targets: loopback ports, or the lab real servers' addresses (ports 20000 up on each), listening in their namespaces.
using var targets = lab is null
    ? new Targets(Enumerable.Range(0, servers).Select(_ => ((string?)null, new IPEndPoint(IPAddress.Loopback, 0))))
    : new Targets(Enumerable.Range(0, servers).Select(i =>
    {
        var rs = lab.RealServers[i % lab.RealServers.Count];
        return ((string?)rs.Namespace, new IPEndPoint(rs.Address, 20000 + i / lab.RealServers.Count));
    }));
// The daemon's namespace is its own in the lab: its loopback ports are private, so fixed ones do.
var (api, health) = lab is null ? (FreePort(), FreePort()) : (LabMerlin.ApiPort, LabMerlin.HealthPort);
var dll = Path.Combine(AppContext.BaseDirectory, "merlin.dll");
List<string> daemonArgs = [dll, "--listen-address", "127.0.0.1", "--port", I(api), "--health-listen-address", "127.0.0.1", "--health-port", I(health),
    "--store-backend", "sqlite", "--store-path", dir.File("merlin.db"), "--state-dir", dir.File("state"), "--dataplane", "none", "--log-level", "error"];
// --keepalive false: the daemon opens a connection per HTTP check (--health-keepalive false).
if (args.Contains("--keepalive")) daemonArgs.AddRange(["--health-keepalive", args[Array.IndexOf(args, "--keepalive") + 1]]);
var dotnet = Merlin.Testing.Requires.FindOnPath("dotnet") ?? "dotnet";
using var daemon = lab is null ? Daemon.Start(dotnet, daemonArgs) : Daemon.Start(lab, lb!, [dotnet, .. daemonArgs]);
// In the lab the API and /metrics are on the load balancer's loopback: connect from inside its namespace.
using var http = new HttpClient(InNamespace(lb?.Namespace)) { BaseAddress = new Uri($"http://127.0.0.1:{health}"), Timeout = TimeSpan.FromSeconds(120) };
try
{
    await Until(async () => { try { return (await http.GetAsync("/healthz")).IsSuccessStatusCode; } catch (HttpRequestException) { return false; } }, "the daemon to start", 60);
    using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{api}", new GrpcChannelOptions { HttpHandler = InNamespace(lb?.Namespace) });
    var client = new Merlin.Contracts.Merlin.MerlinClient(channel);
    // 100 servers per service, as an ingress tier of 100 nodes behind N/100 VIPs would be.
    var perService = 100;
    var created = Stopwatch.StartNew();
    for (var s = 0; s * perService < servers; s++)
    {
        await client.CreateServiceAsync(new VirtualService
        {
            Id = $"svc{s}",
            Key = new() { Ip = $"198.18.{2 + s / 250}.{1 + s % 250}", Port = 80, Protocol = Protocol.Tcp },
            Config = new() { Scheduler = "mh" },
        });
        var batch = new List<Task>();
        for (var i = s * perService; i < Math.Min(servers, (s + 1) * perService); i++)
        {
            batch.Add(client.CreateServerAsync(new RealServer
            {
                ServiceID = $"svc{s}",
                Key = new() { Ip = targets.Endpoints[i].Address.ToString(), Port = (uint)targets.Endpoints[i].Port },
                Config = new() { Weight = 1, Forward = ForwardMethod.Route },
                HealthCheck = new()
                {
                    Endpoint = $"http://:{targets.Endpoints[i].Port}/healthz",
                    Period = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(periodMs)),
                    Timeout = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(Math.Min(1000, periodMs))),
                    UpThreshold = 1,
                    DownThreshold = 1,
                },
            }).ResponseAsync);
        }
        await Task.WhenAll(batch);
        Console.Write($"\r  registered {Math.Min(servers, (s + 1) * perService):N0}/{servers:N0} servers");
    }
    Console.WriteLine($" in {created.Elapsed.TotalSeconds:0.0} s");
    // Every server has a verdict (on a machine too busy for the rate some are down: checks time out).
    await Until(async () => await client.StatusAsync(new Empty()) is var s && s.ServersUp + s.ServersDown == servers, "a verdict for every server", 120);
    var first = await client.StatusAsync(new Empty());
    Console.WriteLine($"  {first.ServersUp:N0} up, {first.ServersDown:N0} down; warming up {warmup} s");
    await Task.Delay(TimeSpan.FromSeconds(warmup));

    // The window opens and closes right after a /metrics read (slow when the daemon is saturated), so
    // the check count, CPU, served requests and clock cover the same span.
    var (checks0, failed0) = await Checks(http);
    var gc0 = await Collections(http);
    var (cpu0, served0, accepted0, t0) = (CpuSeconds(daemon.Id), targets.Served, targets.Accepted, Stopwatch.GetTimestamp());
    var passes0 = (await client.StatusAsync(new Empty())).ReconcilePasses;
    var own0 = Process.GetCurrentProcess().TotalProcessorTime;
    for (var s = 0; s < seconds; s += 5)
    {
        await Task.Delay(TimeSpan.FromSeconds(Math.Min(5, seconds - s)));
        Console.WriteLine($"  {s + Math.Min(5, seconds - s)} s: {targets.Served - served0:N0} requests served");
    }
    var (checks1, failed1) = await Checks(http);
    var gc1 = await Collections(http);
    var (elapsed, cpu1, served1, accepted1) = (Stopwatch.GetElapsedTime(t0).TotalSeconds, CpuSeconds(daemon.Id), targets.Served, targets.Accepted);
    var own = (Process.GetCurrentProcess().TotalProcessorTime - own0).TotalSeconds;
    var passes1 = (await client.StatusAsync(new Empty())).ReconcilePasses;
    var status = await client.StatusAsync(new Empty());
    var rate = (checks1 - checks0) / elapsed;
    var cpu = (cpu1 - cpu0) / elapsed;
    Console.WriteLine();
    Console.WriteLine("| prober | servers × period | checks/s asked | checks/s done | requests/s served | new connections/s | CPU (one core = 100 %) | CPU per check | RSS | servers up / down |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
    Console.WriteLine($"| merlin daemon | {servers:N0} × {periodMs} ms | {servers * 1000.0 / periodMs:N0} | {rate:N0} | {(served1 - served0) / elapsed:N0} | {(accepted1 - accepted0) / elapsed:N0} | {cpu * 100:0.0} % | {cpu / rate * 1e6:0.0} µs | {Rss(daemon.Id) / 1024 / 1024} MiB | {status.ServersUp} / {status.ServersDown} |");
    Console.WriteLine($"(in the window: {failed1 - failed0:N0} failed checks, {passes1 - passes0:N0} reconcile passes, daemon garbage collections gen0/1/2 {string.Join("/", gc1.Zip(gc0, (b, a) => (b - a).ToString("0", CultureInfo.InvariantCulture)))}; this harness's own CPU, serving the checks: {own / elapsed * 100:0.0} %; load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]})");

    // The references, same machine, same targets, same rate, after the daemon is stopped: bare probers
    // in a process of their own (so their CPU, user + system, is theirs alone, runtime included).
    await daemon.StopAsync();
    await Task.Delay(TimeSpan.FromSeconds(2));
    var ports = dir.File("targets.txt");
    File.WriteAllLines(ports, targets.Endpoints.Select(e => e.ToString()));
    var reference = new Dictionary<string, double>();
    if (args.Contains("--no-reference")) return 0;
    foreach (var mode in new[] { "close", "keepalive" })
    {
        var (served, accepted, whole) = (targets.Served, targets.Accepted, Stopwatch.StartNew());
        var (done, refCpu, refElapsed) = await BareProber.RunChildAsync(dll.Replace("merlin.dll", "Merlin.Health.Bench.dll"), lb?.Namespace, mode, ports, periodMs, seconds, Math.Min(warmup, 5));
        var refRate = done / refElapsed;
        reference[mode] = refCpu / done;
        var label = mode == "close" ? "bare prober, connection per check" : "bare prober, kept connection";
        Console.WriteLine($"| {label} | {servers:N0} × {periodMs} ms | {servers * 1000.0 / periodMs:N0} | {refRate:N0} | {(targets.Served - served) / whole.Elapsed.TotalSeconds:N0} | {(targets.Accepted - accepted) / whole.Elapsed.TotalSeconds:N0} | {refCpu / refElapsed * 100:0.0} % | {refCpu / done * 1e6:0.0} µs | | |");
    }
    Console.WriteLine($"daemon CPU per check / bare prober's: {cpu / rate / reference["close"]:0.00} (connection per check), {cpu / rate / reference["keepalive"]:0.00} (kept connection)");
    return 0;
}
finally
{
    // Stop the daemon this run started, by its PID.
    await daemon.StopAsync();
}

static async Task<Lab> CreateLabAsync(int realServers)
{
    Console.WriteLine($"  lab: one load balancer, {realServers} real servers (namespaces on a bridge, veth links)");
    return await Lab.CreateAsync(new LabOptions { LoadBalancers = 1, RealServers = realServers, IPv6 = false, VipsOnRealServers = false });
}

// Threaded NAPI on every bridge port (the veth ends in the bridge's namespace): a packet a host sends is
// queued to the port's NAPI thread instead of being switched and received inside the sender's send().
static async Task ThreadedWireAsync(Lab lab, string wire)
{
    if (wire != "napi") throw new ArgumentException($"--wire must be napi, got '{wire}'");
    var ethtool = Merlin.Testing.Requires.FindOnPath("ethtool") ?? throw new InvalidOperationException("--wire napi needs ethtool (apt-get install ethtool)");
    var ports = lab.Hosts.SelectMany(h => h.Interfaces).Select(i => i.BridgePort).ToList();
    // veth hands a packet to the peer's NAPI only if the sender does not offload TCP segmentation (TSO;
    // GSO still stands in, nothing for a one-segment request) or the receiver merges fraglists: TSO off on
    // the hosts' own ends (eth0…).
    foreach (var host in lab.Hosts)
        foreach (var i in host.Interfaces)
        {
            await RunAsync("ip", "netns", "exec", host.Namespace, ethtool, "-K", i.Name, "tso", "off");
            // A queue in front of the veth, as a NIC has: when the peer's NAPI ring (256) is full the
            // kernel stops the queue and holds packets back instead of dropping them (noqueue can only drop).
            await RunAsync("ip", "netns", "exec", host.Namespace, "tc", "qdisc", "replace", "dev", i.Name, "root", "pfifo", "limit", "1000");
        }
    foreach (var port in ports)
    {
        await RunAsync("ip", "netns", "exec", lab.BridgeNamespace, ethtool, "-K", port, "gro", "on");
        await RunAsync("ip", "netns", "exec", lab.BridgeNamespace, "sh", "-c", $"echo 1 > /sys/class/net/{port}/threaded && cat /sys/class/net/{port}/threaded");
    }
    Console.WriteLine($"  wire: threaded NAPI on {ports.Count} bridge ports");

    static async Task RunAsync(string file, params string[] argv)
    {
        var start = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in argv) start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        var error = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', argv)}: {error.Trim()}");
    }
}

// An HTTP handler whose connections are opened from inside network namespace ns (null: this one); a socket
// keeps the namespace it was made in.
static SocketsHttpHandler InNamespace(string? ns) => new()
{
    ConnectCallback = async (context, ct) =>
    {
        var socket = NetworkNamespace.CreateSocket(ns, System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.NoDelay = true;
            await socket.ConnectAsync(context.DnsEndPoint, ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    },
};

int Arg(string name, int fallback)
{
    var i = Array.IndexOf(args, name);
    if (i < 0) return fallback;
    var text = args[i + 1].Replace("ms", "", StringComparison.Ordinal);
    return int.Parse(text, CultureInfo.InvariantCulture);
}

static string I(int n) => n.ToString(CultureInfo.InvariantCulture);

static int FreePort()
{
    using var l = new TcpListener(IPAddress.Loopback, 0);
    l.Start();
    return ((IPEndPoint)l.LocalEndpoint).Port;
}

static async Task Until(Func<Task<bool>> condition, string what, int seconds)
{
    var clock = Stopwatch.StartNew();
    while (!await condition())
    {
        if (clock.Elapsed.TotalSeconds > seconds) throw new TimeoutException($"waited {seconds} s for {what}");
        await Task.Delay(250);
    }
}

// One scrape: all checks run (merlin_health_checks_total{result=…}) and the failed ones among them.
static async Task<(double All, double Failed)> Checks(HttpClient http)
{
    var series = (await http.GetStringAsync("/metrics")).Split('\n')
        .Where(l => l.StartsWith("merlin_health_checks_total{", StringComparison.Ordinal))
        .Select(l => (Line: l, Value: double.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture)))
        .ToList();
    return (series.Sum(s => s.Value), series.Where(s => s.Line.Contains("result=\"unhealthy\"", StringComparison.Ordinal)).Sum(s => s.Value));
}

// The daemon's garbage collections so far by generation (prometheus-net's dotnet_collection_count_total).
static async Task<double[]> Collections(HttpClient http)
{
    var counts = new double[3];
    foreach (var l in (await http.GetStringAsync("/metrics")).Split('\n'))
    {
        if (!l.StartsWith("dotnet_collection_count_total{generation=\"", StringComparison.Ordinal)) continue;
        var generation = l["dotnet_collection_count_total{generation=\"".Length] - '0';
        if (generation is >= 0 and < 3) counts[generation] = double.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
    }
    return counts;
}

// /proc/PID/stat fields 14 and 15 (utime, stime) in clock ticks of 1/100 s, after the ")" that ends the name.
static double CpuSeconds(int pid)
{
    var stat = File.ReadAllText($"/proc/{pid}/stat");
    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
}

static long Rss(int pid) =>
    long.Parse(File.ReadAllLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;

/// <summary>
/// The least a health check can do, on a fixed schedule: "close" connects, sends one GET, reads the status
/// line and closes; "keepalive" keeps one connection per server and sends each GET on it. Runs as a child
/// process (<c>--bare-prober MODE PORTS-FILE PERIOD-MS SECONDS WARMUP</c>) and prints the checks that got a
/// 200 in its window and its own CPU seconds over that window.
/// </summary>
internal static class BareProber
{
    private static readonly byte[] CloseRequest = Encoding.ASCII.GetBytes("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    private static readonly byte[] KeepAliveRequest = Encoding.ASCII.GetBytes("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");

    public static async Task<(long Done, double CpuSeconds, double Elapsed)> RunChildAsync(string benchDll, string? ns, string mode, string targetsFile, int periodMs, int seconds, int warmup)
    {
        var dotnet = Merlin.Testing.Requires.FindOnPath("dotnet") ?? "dotnet";
        // In the lab, where the daemon ran: ip netns exec execs dotnet, so the child is the prober itself.
        var start = new ProcessStartInfo(ns is null ? dotnet : "ip") { UseShellExecute = false, RedirectStandardOutput = true };
        if (ns is not null) foreach (var a in new[] { "netns", "exec", ns, dotnet }) start.ArgumentList.Add(a);
        foreach (var a in new object[] { benchDll, "--bare-prober", mode, targetsFile, periodMs, seconds, warmup }) start.ArgumentList.Add(Convert.ToString(a, CultureInfo.InvariantCulture)!);
        using var child = Process.Start(start)!;
        try
        {
            var output = await child.StandardOutput.ReadToEndAsync();
            await child.WaitForExitAsync();
            var parts = output.Trim().Split(' ');
            return (long.Parse(parts[0], CultureInfo.InvariantCulture), double.Parse(parts[1], CultureInfo.InvariantCulture), double.Parse(parts[2], CultureInfo.InvariantCulture));
        }
        finally
        {
            if (!child.HasExited) child.Kill(); // this run's child, by its handle
        }
    }

    public static async Task<int> MainAsync(string[] args)
    {
        var (mode, ports) = (args[1], File.ReadAllLines(args[2]).Select(t => IPEndPoint.Parse(t)).ToArray());
        var period = TimeSpan.FromMilliseconds(int.Parse(args[3], CultureInfo.InvariantCulture));
        var (seconds, warmup) = (int.Parse(args[4], CultureInfo.InvariantCulture), int.Parse(args[5], CultureInfo.InvariantCulture));
        var kept = new Kept?[ports.Length];
        await RunAsync(mode, ports, kept, period, TimeSpan.FromSeconds(warmup));
        var (cpu0, t0) = (Process.GetCurrentProcess().TotalProcessorTime, Stopwatch.GetTimestamp());
        var done = await RunAsync(mode, ports, kept, period, TimeSpan.FromSeconds(seconds));
        var (elapsed, cpu) = (Stopwatch.GetElapsedTime(t0).TotalSeconds, (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds);
        Console.WriteLine(FormattableString.Invariant($"{done} {cpu} {elapsed}"));
        return 0;
    }

    private static async Task<long> RunAsync(string mode, IPEndPoint[] ports, Kept?[] kept, TimeSpan period, TimeSpan duration)
    {
        long ok = 0;
        var tick = TimeSpan.FromMilliseconds(10);
        var perTick = ports.Length * tick.TotalMilliseconds / period.TotalMilliseconds;
        var clock = Stopwatch.StartNew();
        using var timer = new PeriodicTimer(tick);
        double owed = 0;
        var next = 0;
        var running = new List<Task>();
        while (clock.Elapsed < duration && await timer.WaitForNextTickAsync())
        {
            for (owed += perTick; owed >= 1; owed--)
            {
                var i = next++ % ports.Length;
                running.Add(mode == "close"
                    ? Task.Run(async () => { if (await CloseAsync(ports[i])) Interlocked.Increment(ref ok); })
                    : Task.Run(async () => { if (await KeepAliveAsync(ports[i], kept, i)) Interlocked.Increment(ref ok); }));
            }
            if (running.Count > 10_000) { await Task.WhenAll(running); running.Clear(); }
        }
        await Task.WhenAll(running);
        return ok;
    }

    private static async Task<bool> CloseAsync(IPEndPoint target)
    {
        using var s = new Socket(System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await s.ConnectAsync(target);
            await s.SendAsync(CloseRequest);
            var buffer = new byte[256];
            var n = await s.ReceiveAsync(buffer);
            return n >= 12 && buffer[9] == (byte)'2';
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>One server's kept connection; a check finds it busy only if the last one has not ended.</summary>
    private sealed class Kept(Socket socket)
    {
        public readonly Socket Socket = socket;
        public readonly byte[] Buffer = new byte[256];
        public int Busy;
    }

    private static async Task<bool> KeepAliveAsync(IPEndPoint target, Kept?[] kept, int i)
    {
        var k = kept[i];
        if (k is null)
        {
            var s = new Socket(System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await s.ConnectAsync(target);
            k = kept[i] = new Kept(s);
        }
        if (Interlocked.Exchange(ref k.Busy, 1) == 1) return false;
        try
        {
            await k.Socket.SendAsync(KeepAliveRequest);
            // The targets' answer has a fixed length: read exactly that.
            var seen = 0;
            while (seen < Targets.KeepAliveResponse.Length)
            {
                var n = await k.Socket.ReceiveAsync(k.Buffer.AsMemory(seen));
                if (n == 0) { kept[i] = null; return false; }
                seen += n;
            }
            return k.Buffer[9] == (byte)'2';
        }
        catch (SocketException)
        {
            kept[i] = null;
            return false;
        }
        finally
        {
            Volatile.Write(ref k.Busy, 0);
        }
    }
}

/// <summary>
/// N minimal HTTP/1.1 servers, one listening socket each (on loopback, or on a lab real server's address in
/// its namespace): 200 "ok" to any request; the connection is kept for the next request unless the request
/// says <c>Connection: close</c>.
/// </summary>
internal sealed class Targets : IDisposable
{
    private static readonly byte[] CloseResponse = Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    public static readonly byte[] KeepAliveResponse = Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    private readonly List<Socket> _listeners = [];
    private readonly CancellationTokenSource _stop = new();
    private long _served, _accepted;

    /// <param name="at">Where each server listens: a namespace (null: this one) and an endpoint (port 0: any free one).</param>
    public Targets(IEnumerable<(string? Namespace, IPEndPoint Endpoint)> at)
    {
        foreach (var group in at.GroupBy(t => t.Namespace))
        {
            // A socket keeps the namespace it was made in: made inside it, bound and listening from here.
            var made = group.Select(t =>
            {
                var s = NetworkNamespace.CreateSocket(group.Key, System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                s.Bind(t.Endpoint);
                s.Listen(256);
                return s;
            }).ToList();
            foreach (var s in made)
            {
                _listeners.Add(s);
                Endpoints.Add((IPEndPoint)s.LocalEndPoint!);
                _ = AcceptAsync(s);
            }
        }
    }

    public List<IPEndPoint> Endpoints { get; } = [];

    public long Served => Interlocked.Read(ref _served);
    public long Accepted => Interlocked.Read(ref _accepted);

    private async Task AcceptAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket c;
            try { c = await listener.AcceptAsync(_stop.Token); }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
            Interlocked.Increment(ref _accepted);
            _ = ServeAsync(c);
        }
    }

    private async Task ServeAsync(Socket c)
    {
        using (c)
        {
            var buffer = new byte[2048];
            try
            {
                while (true)
                {
                    // Read one request head (a health check sends no body), answer; close if asked to.
                    var seen = 0;
                    int head;
                    while ((head = buffer.AsSpan(0, seen).IndexOf("\r\n\r\n"u8)) < 0)
                    {
                        if (seen == buffer.Length) return;
                        var n = await c.ReceiveAsync(buffer.AsMemory(seen), _stop.Token);
                        if (n == 0) return;
                        seen += n;
                    }
                    var close = buffer.AsSpan(0, head).IndexOf("Connection: close"u8) >= 0;
                    await c.SendAsync(close ? CloseResponse : KeepAliveResponse, _stop.Token);
                    Interlocked.Increment(ref _served);
                    if (close)
                    {
                        c.Shutdown(SocketShutdown.Both);
                        return;
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException) { }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        foreach (var s in _listeners) s.Dispose();
    }
}

/// <summary>The daemon under test: a child process here, or a lab process in a load balancer's namespace.</summary>
internal sealed class Daemon : IDisposable
{
    private readonly Process? _process;
    private readonly LabProcess? _labProcess;

    private Daemon(Process? process, LabProcess? labProcess) => (_process, _labProcess) = (process, labProcess);

    public int Id => _process?.Id ?? _labProcess!.Pid;

    public static Daemon Start(string dotnet, IReadOnlyList<string> argv)
    {
        var start = new ProcessStartInfo(dotnet) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in argv) start.ArgumentList.Add(a);
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.WriteLine($"  daemon: {l}"); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.WriteLine($"  daemon: {l}"); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return new Daemon(process, null);
    }

    public static Daemon Start(Lab lab, LabHost host, IReadOnlyList<string> argv) => new(null, lab.StartProcess(host, argv));

    /// <summary>Stops the daemon this run started, by its PID.</summary>
    public async Task StopAsync()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        if (_labProcess is not null) await _labProcess.DisposeAsync();
    }

    public void Dispose()
    {
        _process?.Dispose();
        _labProcess?.Dispose();
    }
}
