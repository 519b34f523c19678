using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Lab.Server;

/// <summary>
/// <c>client http</c> and <c>client udp</c>: a bounded loop of short requests, each on a new connection or
/// socket (a new flow), printing one <see cref="RequestReport"/> as JSON. Ends after --count requests or
/// --duration, whichever comes first, or early on SIGTERM/SIGINT (still printing the report).
/// </summary>
public sealed class RequestClient
{
    private const int MaxFailuresListed = 50;

    private readonly string _mode;
    private readonly IPEndPoint _target;
    private readonly int _count, _concurrency;
    private readonly TimeSpan _timeout, _interval, _duration;
    private readonly string _path, _host;
    private readonly (int First, int Last)? _sourcePorts;
    private readonly bool _flows;
    private readonly object _lock = new();
    private readonly RequestReport _report;
    private readonly Stopwatch _clock = new();
    private double _latencySum;
    private readonly List<double> _successLatencies = [];

    private RequestClient(string mode, Args a)
    {
        _mode = mode;
        _target = a.Endpoint("target");
        _count = a.Int("count", 100, 1, 1_000_000);
        _timeout = a.Duration("timeout", TimeSpan.FromSeconds(2), TimeSpan.FromMinutes(1));
        _interval = a.Duration("interval", TimeSpan.Zero, TimeSpan.FromMinutes(1));
        _duration = a.Duration("duration", TimeSpan.FromMinutes(2), TimeSpan.FromHours(1));
        _concurrency = a.Int("concurrency", 1, 1, 256);
        _path = mode == "http" ? a.String("path") ?? "/" : "/";
        _host = mode == "http" ? a.String("host") ?? _target.ToString() : "";
        _sourcePorts = a.PortRange("source-ports");
        _flows = a.Flag("flows");
        a.RejectUnknown();
        if (!_path.StartsWith('/') || _path.Any(char.IsWhiteSpace)) throw new UsageException("--path must start with / and have no spaces");
        if (_sourcePorts is { } r && r.Last - r.First + 1 < _concurrency)
            throw new UsageException("--source-ports must hold at least --concurrency ports");
        _report = new RequestReport { Mode = mode, Target = _target.ToString(), Requested = _count, Flows = _flows ? [] : null };
    }

    public static async Task<int> RunAsync(string mode, Args a)
    {
        var client = new RequestClient(mode, a);
        await client.RunAsync();
        return 0;
    }

    private async Task RunAsync()
    {
        using var stop = new CancellationTokenSource(_duration);
        using var term = Signals.OnTerminate(stop);
        var next = -1;
        await Warmup.RunAsync(_target.AddressFamily, _mode == "http" ? SocketType.Stream : SocketType.Dgram, async (ep, ct) =>
        {
            if (_mode == "http") await HttpAsync(ep, null, ct);
            else await UdpAsync(ep, 0, null, ct);
        });
        _clock.Start();
        var workers = Enumerable.Range(0, _concurrency).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var i = Interlocked.Increment(ref next);
                if (i >= _count) return;
                // A request in flight finishes within its own timeout even when the loop is told to stop.
                await OneAsync(i);
                if (_interval > TimeSpan.Zero)
                {
                    try
                    {
                        await Task.Delay(_interval, stop.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            }
        })).ToList();
        await Task.WhenAll(workers);
        _report.ElapsedMs = _clock.ElapsedMilliseconds;
        _report.StoppedEarly = _report.Completed < _count;
        _report.MeanLatencyMs = _report.Completed == 0 ? 0 : Math.Round(_latencySum / _report.Completed, 3);
        _successLatencies.Sort();
        _report.P50LatencyMs = Percentile(_successLatencies, 50);
        _report.P90LatencyMs = Percentile(_successLatencies, 90);
        _report.P99LatencyMs = Percentile(_successLatencies, 99);
        _report.Flows?.Sort((x, y) => x.Request.CompareTo(y.Request));
        Console.Out.WriteLine(ReportJson.Write(_report));
    }

    private async Task OneAsync(int i)
    {
        var started = _clock.Elapsed;
        int? port = _sourcePorts is { } r ? r.First + i % (r.Last - r.First + 1) : null;
        var localPort = 0;
        string? server = null;
        var status = 0;
        string? error = null;
        try
        {
            using var deadline = new CancellationTokenSource(_timeout);
            (localPort, server, status) = _mode == "http"
                ? await HttpAsync(_target, port, deadline.Token)
                : await UdpAsync(_target, i, port, deadline.Token);
            if (_mode == "http" && status is < 200 or > 299) error = $"status-{status}";
        }
        catch (OperationCanceledException)
        {
            error = "timeout";
        }
        catch (SocketException e)
        {
            error = e.SocketErrorCode.ToString();
        }
        catch (IOException e) when (e.InnerException is SocketException se)
        {
            error = se.SocketErrorCode.ToString();
        }
        catch (Exception e) when (e is IOException or FormatException or InvalidDataException)
        {
            error = e.Message;
        }
        var latency = (_clock.Elapsed - started).TotalMilliseconds;
        lock (_lock)
        {
            _report.Completed++;
            _latencySum += latency;
            _report.MaxLatencyMs = Math.Max(_report.MaxLatencyMs, Math.Round(latency, 3));
            if (status != 0) Increment(_report.StatusCodes, status.ToString(System.Globalization.CultureInfo.InvariantCulture));
            if (error is null)
            {
                _report.Successes++;
                _successLatencies.Add(latency);
                Increment(_report.PerServer, server ?? "?");
            }
            else
            {
                _report.Failures++;
                Increment(_report.Errors, error);
                if (_report.FirstFailures.Count < MaxFailuresListed)
                    _report.FirstFailures.Add(new FailureRecord(i, (long)started.TotalMilliseconds, error));
            }
            _report.Flows?.Add(new FlowRecord(i, localPort, server, status, error));
        }
    }

    /// <summary>The nearest-rank percentile of sorted values: the smallest value with at least <paramref name="p"/> % of them at or below it.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double p)
    {
        if (sorted.Count == 0) return 0;
        var rank = (int)Math.Ceiling(p / 100 * sorted.Count);
        return Math.Round(sorted[Math.Clamp(rank, 1, sorted.Count) - 1], 3);
    }

    private static void Increment(SortedDictionary<string, int> d, string key) => d[key] = d.GetValueOrDefault(key) + 1;

    private static Socket NewSocket(IPEndPoint target, SocketType type, ProtocolType protocol, int? port)
    {
        var s = new Socket(target.AddressFamily, type, protocol);
        try
        {
            if (port is { } p)
            {
                s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                var any = target.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any;
                s.Bind(new IPEndPoint(any, p));
            }
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private async Task<(int LocalPort, string? Server, int Status)> HttpAsync(IPEndPoint target, int? port, CancellationToken ct)
    {
        using var s = NewSocket(target, SocketType.Stream, ProtocolType.Tcp, port);
        s.NoDelay = true;
        // With fixed source ports the same flows are replayed later: close with RST so no TIME_WAIT
        // state holds the port (or, on the server, the 4-tuple).
        if (port is not null) s.LingerState = new LingerOption(true, 0);
        await s.ConnectAsync(target, ct);
        var localPort = ((IPEndPoint)s.LocalEndPoint!).Port;
        var request = Encoding.ASCII.GetBytes($"GET {_path} HTTP/1.1\r\nHost: {_host}\r\nUser-Agent: merlin-lab\r\nConnection: close\r\n\r\n");
        await s.SendAsync(request, ct);

        var buf = new byte[16 * 1024];
        var filled = 0;
        int headerEnd;
        while ((headerEnd = buf.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
        {
            if (filled == buf.Length) throw new InvalidDataException("response header too large");
            var n = await s.ReceiveAsync(buf.AsMemory(filled), SocketFlags.None, ct);
            if (n == 0) throw new IOException(filled == 0 ? "closed before any response" : "closed inside the response header");
            filled += n;
        }
        var lines = Encoding.ASCII.GetString(buf, 0, headerEnd).Split("\r\n");
        var statusParts = lines[0].Split(' ', 3);
        if (statusParts.Length < 2 || !statusParts[0].StartsWith("HTTP/1.", StringComparison.Ordinal) || !int.TryParse(statusParts[1], out var status))
            throw new InvalidDataException($"bad status line '{lines[0]}'");
        string? server = null;
        var length = -1L;
        foreach (var line in lines.Skip(1))
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0) continue;
            var name = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            if (name.Equals("X-Server", StringComparison.OrdinalIgnoreCase)) server = value;
            else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase) && long.TryParse(value, out var l)) length = l;
        }
        // Read the body: to Content-Length, or to the end of the connection.
        var body = (long)(filled - headerEnd - 4);
        while (length < 0 || body < length)
        {
            var n = await s.ReceiveAsync(buf, SocketFlags.None, ct);
            if (n == 0)
            {
                if (length >= 0) throw new IOException("closed inside the response body");
                break;
            }
            body += n;
        }
        return (localPort, server, status);
    }

    private static async Task<(int LocalPort, string? Server, int Status)> UdpAsync(IPEndPoint target, int i, int? port, CancellationToken ct)
    {
        using var s = NewSocket(target, SocketType.Dgram, ProtocolType.Udp, port);
        // Connected: the kernel drops datagrams from anyone else, and an ICMP unreachable surfaces as an error.
        await s.ConnectAsync(target, ct);
        var localPort = ((IPEndPoint)s.LocalEndPoint!).Port;
        var message = $"q {i}";
        await s.SendAsync(Encoding.ASCII.GetBytes(message), SocketFlags.None, ct);
        var buf = new byte[2048];
        var n = await s.ReceiveAsync(buf, SocketFlags.None, ct);
        var reply = Encoding.ASCII.GetString(buf, 0, n);
        var space = reply.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0 || reply[(space + 1)..] != message) throw new InvalidDataException($"unexpected reply '{reply}'");
        return (localPort, reply[..space], 0);
    }
}
