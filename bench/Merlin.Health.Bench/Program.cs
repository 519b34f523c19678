using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Merlin.Testing;
using Merlin.Wire;

// Health-check load: the real daemon, in its own process (so its CPU is its own), checks N HTTP servers
// that this process serves on loopback (127.0.0.1, one port each), every period. The rate is the
// daemon's own count of checks (merlin_health_checks_total); the CPU is the daemon's user+system time
// from /proc over the same window, as a share of one core.
// Usage: dotnet run -c Release --project bench/Merlin.Health.Bench -- [--servers 2000] [--period 200ms]
//        [--seconds 30] [--warmup 10]
var servers = Arg("--servers", 2000);
var periodMs = Arg("--period", 200);
var seconds = Arg("--seconds", 30);
var warmup = Arg("--warmup", 10);
Console.WriteLine($"{servers:N0} servers checked every {periodMs} ms: {servers * 1000.0 / periodMs:N0} checks/s asked for; measuring {seconds} s after {warmup} s of warm-up");

using var dir = new TempDir("health-bench");
using var targets = new Targets(servers);
var (api, health) = (FreePort(), FreePort());
var dll = Path.Combine(AppContext.BaseDirectory, "merlin.dll");
var start = new ProcessStartInfo(Merlin.Testing.Requires.FindOnPath("dotnet") ?? "dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
foreach (var a in new[] { dll, "--listen-address", "127.0.0.1", "--port", I(api), "--health-listen-address", "127.0.0.1", "--health-port", I(health),
             "--store-backend", "sqlite", "--store-path", dir.File("merlin.db"), "--state-dir", dir.File("state"), "--dataplane", "none", "--log-level", "error" })
    start.ArgumentList.Add(a);
using var daemon = Process.Start(start)!;
daemon.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.WriteLine($"  daemon: {l}"); };
daemon.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 } l) Console.WriteLine($"  daemon: {l}"); };
daemon.BeginOutputReadLine();
daemon.BeginErrorReadLine();
using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{health}"), Timeout = TimeSpan.FromSeconds(120) };
try
{
    await Until(async () => { try { return (await http.GetAsync("/healthz")).IsSuccessStatusCode; } catch (HttpRequestException) { return false; } }, "the daemon to start", 60);
    using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{api}");
    var client = new Merlin.Wire.Merlin.MerlinClient(channel);
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
                Key = new() { Ip = "127.0.0.1", Port = (uint)targets.Ports[i] },
                Config = new() { Weight = 1, Forward = ForwardMethod.Route },
                HealthCheck = new()
                {
                    Endpoint = $"http://:{targets.Ports[i]}/healthz",
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
    var (cpu0, served0, t0) = (CpuSeconds(daemon.Id), targets.Served, Stopwatch.GetTimestamp());
    var passes0 = (await client.StatusAsync(new Empty())).ReconcilePasses;
    var own0 = Process.GetCurrentProcess().TotalProcessorTime;
    for (var s = 0; s < seconds; s += 5)
    {
        await Task.Delay(TimeSpan.FromSeconds(Math.Min(5, seconds - s)));
        Console.WriteLine($"  {s + Math.Min(5, seconds - s)} s: {targets.Served - served0:N0} requests served");
    }
    var (checks1, failed1) = await Checks(http);
    var (elapsed, cpu1, served1) = (Stopwatch.GetElapsedTime(t0).TotalSeconds, CpuSeconds(daemon.Id), targets.Served);
    var own = (Process.GetCurrentProcess().TotalProcessorTime - own0).TotalSeconds;
    var passes1 = (await client.StatusAsync(new Empty())).ReconcilePasses;
    var status = await client.StatusAsync(new Empty());
    var rate = (checks1 - checks0) / elapsed;
    var cpu = (cpu1 - cpu0) / elapsed;
    Console.WriteLine();
    Console.WriteLine("| servers | period | checks/s asked | checks/s done (daemon) | requests/s served | daemon CPU (one core = 100 %) | CPU per check | daemon RSS | servers up / down |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
    Console.WriteLine($"| {servers:N0} | {periodMs} ms | {servers * 1000.0 / periodMs:N0} | {rate:N0} | {(served1 - served0) / elapsed:N0} | {cpu * 100:0.0} % | {cpu / rate * 1e6:0.0} µs | {Rss(daemon.Id) / 1024 / 1024} MiB | {status.ServersUp} / {status.ServersDown} |");
    Console.WriteLine($"(in the window: {failed1 - failed0:N0} failed checks, {passes1 - passes0:N0} reconcile passes; this harness's own CPU, serving the checks: {own / elapsed * 100:0.0} %; load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]})");

    // The reference, same machine, same targets, same rate: a bare prober (connect, one GET, read the
    // status line, close) in this process. The daemon is stopped first; this process's CPU above what
    // serving alone cost is the prober's.
    daemon.Kill(entireProcessTree: true);
    await daemon.WaitForExitAsync();
    await Task.Delay(TimeSpan.FromSeconds(2));
    var (ref0, refServed0, refT0) = (Process.GetCurrentProcess().TotalProcessorTime, targets.Served, Stopwatch.GetTimestamp());
    var probed = await BareProber.RunAsync(targets.Ports, TimeSpan.FromMilliseconds(periodMs), TimeSpan.FromSeconds(seconds));
    var refElapsed = Stopwatch.GetElapsedTime(refT0).TotalSeconds;
    var refCpu = (Process.GetCurrentProcess().TotalProcessorTime - ref0).TotalSeconds / refElapsed - own / elapsed * (double)(targets.Served - refServed0) / refElapsed / Math.Max(1, (served1 - served0) / elapsed);
    var refRate = probed / refElapsed;
    Console.WriteLine($"| bare prober (reference) | {periodMs} ms | {servers * 1000.0 / periodMs:N0} | {refRate:N0} | {(targets.Served - refServed0) / refElapsed:N0} | {refCpu * 100:0.0} % | {refCpu / refRate * 1e6:0.0} µs | | |");
    Console.WriteLine($"daemon CPU per check / bare prober's: {cpu / rate / (refCpu / refRate):0.00}");
    return 0;
}
finally
{
    // Stop the daemon this run started, by its PID.
    if (!daemon.HasExited)
    {
        daemon.Kill(entireProcessTree: true);
        await daemon.WaitForExitAsync();
    }
}

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

// One scrape: all checks run (merlin_health_checks{result=…}) and the failed ones among them.
static async Task<(double All, double Failed)> Checks(HttpClient http)
{
    var series = (await http.GetStringAsync("/metrics")).Split('\n')
        .Where(l => l.StartsWith("merlin_health_checks{", StringComparison.Ordinal))
        .Select(l => (Line: l, Value: double.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture)))
        .ToList();
    return (series.Sum(s => s.Value), series.Where(s => s.Line.Contains("result=\"unhealthy\"", StringComparison.Ordinal)).Sum(s => s.Value));
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

/// <summary>The least a health check can do: connect, send one GET, read the status line, close; on a fixed schedule.</summary>
internal static class BareProber
{
    private static readonly byte[] Request = Encoding.ASCII.GetBytes("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");

    public static async Task<long> RunAsync(IReadOnlyList<int> ports, TimeSpan period, TimeSpan duration)
    {
        long ok = 0;
        var tick = TimeSpan.FromMilliseconds(10);
        var perTick = ports.Count * tick.TotalMilliseconds / period.TotalMilliseconds;
        var clock = Stopwatch.StartNew();
        using var timer = new PeriodicTimer(tick);
        double owed = 0;
        var next = 0;
        var running = new List<Task>();
        while (clock.Elapsed < duration && await timer.WaitForNextTickAsync())
        {
            for (owed += perTick; owed >= 1; owed--)
            {
                var port = ports[next++ % ports.Count];
                running.Add(Task.Run(async () => { if (await ProbeAsync(port)) Interlocked.Increment(ref ok); }));
            }
            if (running.Count > 10_000) { await Task.WhenAll(running); running.Clear(); }
        }
        await Task.WhenAll(running);
        return ok;
    }

    private static async Task<bool> ProbeAsync(int port)
    {
        using var s = new Socket(System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
            await s.SendAsync(Request);
            var buffer = new byte[256];
            var n = await s.ReceiveAsync(buffer);
            return n >= 12 && buffer[9] == (byte)'2';
        }
        catch (SocketException)
        {
            return false;
        }
    }
}

/// <summary>N minimal HTTP/1.1 servers on 127.0.0.1 (one port each): 200 "ok" to any request, then close.</summary>
internal sealed class Targets : IDisposable
{
    private static readonly byte[] Response = Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    private readonly List<Socket> _listeners = [];
    private readonly CancellationTokenSource _stop = new();
    private long _served;

    public Targets(int count)
    {
        for (var i = 0; i < count; i++)
        {
            var s = new Socket(System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            s.Listen(256);
            _listeners.Add(s);
            Ports.Add(((IPEndPoint)s.LocalEndPoint!).Port);
            _ = AcceptAsync(s);
        }
    }

    public List<int> Ports { get; } = [];

    public long Served => Interlocked.Read(ref _served);

    private async Task AcceptAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket c;
            try { c = await listener.AcceptAsync(_stop.Token); }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
            _ = ServeAsync(c);
        }
    }

    private async Task ServeAsync(Socket c)
    {
        using (c)
        {
            var buffer = new byte[2048];
            var seen = 0;
            try
            {
                // Read the request head (a health check sends no body), answer, close.
                while (seen < buffer.Length)
                {
                    var n = await c.ReceiveAsync(buffer.AsMemory(seen), _stop.Token);
                    if (n == 0) return;
                    seen += n;
                    if (buffer.AsSpan(0, seen).IndexOf("\r\n\r\n"u8) >= 0) break;
                }
                await c.SendAsync(Response, _stop.Token);
                Interlocked.Increment(ref _served);
                c.Shutdown(SocketShutdown.Both);
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
