using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Lab.Server;

/// <summary>
/// <c>client hold</c>: opens --connections long-lived connections to a TCP echo server (with --only NAME,
/// keeps only connections that landed on that server), prints <c>connected N</c> on stderr, then every
/// --interval exchanges one line on each open connection for --duration, and prints a
/// <see cref="HoldReport"/>: which server each connection reached and whether it answered every time.
/// A connection that misses a reply (timeout, reset, close) is dead and is not reopened. SIGTERM/SIGINT end
/// the hold early and still print the report.
/// </summary>
public sealed class HoldClient
{
    private readonly IPEndPoint _target;
    private readonly int _connections, _maxAttempts;
    private readonly TimeSpan _interval, _duration, _timeout;
    private readonly string? _only;

    private HoldClient(Args a)
    {
        _target = a.Endpoint("target");
        _connections = a.Int("connections", 20, 1, 10_000);
        _interval = a.Duration("interval", TimeSpan.FromMilliseconds(200), TimeSpan.FromMinutes(1));
        _duration = a.Duration("duration", TimeSpan.FromSeconds(10), TimeSpan.FromHours(1));
        _timeout = a.Duration("timeout", TimeSpan.FromSeconds(2), TimeSpan.FromMinutes(1));
        _only = a.String("only");
        _maxAttempts = a.Int("max-attempts", _only is null ? _connections * 2 : _connections * 50, 1, 1_000_000);
        a.RejectUnknown();
        if (_interval <= TimeSpan.Zero) throw new UsageException("--interval must be more than 0");
    }

    public static async Task<int> RunAsync(Args a)
    {
        var client = new HoldClient(a);
        await client.RunAsync();
        return 0;
    }

    private sealed class Conn(int id, Socket socket)
    {
        public int Id { get; } = id;
        public Socket Socket { get; } = socket;
        public byte[] Buffer { get; } = new byte[4096];
        public int Filled { get; set; }
        public HoldConnection Report { get; } = new() { Id = id };
    }

    private async Task RunAsync()
    {
        using var stop = new CancellationTokenSource();
        using var term = Signals.OnTerminate(stop);
        await Warmup.RunAsync(_target.AddressFamily, SocketType.Stream, async (ep, ct) =>
        {
            using var socket = new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(ep, ct);
            await ExchangeAsync(new Conn(0, socket), 0, ct);
        });
        var report = new HoldReport { Target = _target.ToString(), Requested = _connections };
        var open = new List<Conn>();
        var clock = Stopwatch.StartNew();

        // Phase 1: open. Bounded by --max-attempts and by --duration (opening must not run forever either).
        while (open.Count < _connections && report.Attempts < _maxAttempts && !stop.IsCancellationRequested && clock.Elapsed < _duration)
        {
            report.Attempts++;
            var socket = new Socket(_target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            var conn = new Conn(open.Count, socket);
            try
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stop.Token);
                deadline.CancelAfter(_timeout);
                await socket.ConnectAsync(_target, deadline.Token);
                conn.Report.LocalPort = ((IPEndPoint)socket.LocalEndPoint!).Port;
                conn.Report.Server = await ExchangeAsync(conn, 0, deadline.Token);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or InvalidDataException)
            {
                socket.Dispose();
                if (report.OpenErrors.Count < 20) report.OpenErrors.Add(Describe(e));
                continue;
            }
            if (_only is not null && conn.Report.Server != _only)
            {
                socket.Dispose();
                continue;
            }
            conn.Report.Exchanges = 1;
            open.Add(conn);
        }
        report.Opened = open.Count;
        report.OpenMs = clock.ElapsedMilliseconds;
        foreach (var c in open) report.PerServer[c.Report.Server] = report.PerServer.GetValueOrDefault(c.Report.Server) + 1;
        await Console.Error.WriteLineAsync($"connected {open.Count}");
        await Console.Error.FlushAsync();

        // Phase 2: hold. Rounds start every --interval (no drift); each round waits for every live connection.
        var hold = Stopwatch.StartNew();
        var alive = new List<Conn>(open);
        for (long round = 1; alive.Count > 0 && !stop.IsCancellationRequested; round++)
        {
            var due = TimeSpan.FromTicks(_interval.Ticks * round);
            if (due > _duration) break;
            var wait = due - hold.Elapsed;
            if (wait > TimeSpan.Zero)
            {
                try
                {
                    await Task.Delay(wait, stop.Token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            var r = round;
            await Task.WhenAll(alive.Select(async c =>
            {
                try
                {
                    using var deadline = new CancellationTokenSource(_timeout);
                    var server = await ExchangeAsync(c, r, deadline.Token);
                    if (server != c.Report.Server) throw new InvalidDataException($"answered by {server}, opened on {c.Report.Server}");
                    c.Report.Exchanges++;
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or InvalidDataException or ObjectDisposedException)
                {
                    c.Report.Error = Describe(e);
                    c.Report.FailedAtMs = hold.ElapsedMilliseconds;
                    c.Socket.Dispose();
                }
            }));
            alive.RemoveAll(c => c.Report.Error is not null);
        }
        report.HoldMs = hold.ElapsedMilliseconds;
        report.StoppedEarly = stop.IsCancellationRequested;

        foreach (var c in open)
        {
            c.Report.Survived = c.Report.Error is null;
            report.Exchanges += c.Report.Exchanges;
            report.Connections.Add(c.Report);
            if (c.Report.Survived)
            {
                try
                {
                    c.Socket.Shutdown(SocketShutdown.Both);
                }
                catch (SocketException)
                {
                    // Closing anyway.
                }
            }
            c.Socket.Dispose();
        }
        report.Survived = open.Count(c => c.Report.Survived);
        report.Failed = _connections - report.Survived;
        Console.Out.WriteLine(ReportJson.Write(report));
    }

    /// <summary>Sends <c>ping ID SEQ</c>, reads the reply line <c>SERVER ping ID SEQ</c>, returns SERVER.</summary>
    private static async Task<string> ExchangeAsync(Conn c, long seq, CancellationToken ct)
    {
        var message = $"ping {c.Id} {seq}";
        await c.Socket.SendAsync(Encoding.ASCII.GetBytes(message + "\n"), ct);
        int nl;
        while ((nl = c.Buffer.AsSpan(0, c.Filled).IndexOf((byte)'\n')) < 0)
        {
            if (c.Filled == c.Buffer.Length) throw new InvalidDataException("reply line too long");
            var n = await c.Socket.ReceiveAsync(c.Buffer.AsMemory(c.Filled), SocketFlags.None, ct);
            if (n == 0) throw new IOException("closed by the server");
            c.Filled += n;
        }
        var line = Encoding.ASCII.GetString(c.Buffer, 0, nl);
        System.Buffer.BlockCopy(c.Buffer, nl + 1, c.Buffer, 0, c.Filled - nl - 1);
        c.Filled -= nl + 1;
        var space = line.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0 || line[(space + 1)..] != message) throw new InvalidDataException($"unexpected reply '{line}' to '{message}'");
        return line[..space];
    }

    private static string Describe(Exception e) => e switch
    {
        OperationCanceledException => "timeout",
        SocketException se => se.SocketErrorCode.ToString(),
        IOException { InnerException: SocketException se } => se.SocketErrorCode.ToString(),
        _ => e.Message,
    };
}
