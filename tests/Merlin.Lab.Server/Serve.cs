using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Lab.Server;

/// <summary>
/// <c>serve</c>: the servers a lab real server runs, each naming this server in every answer.
/// <list type="bullet">
/// <item>HTTP/1.1 (keep-alive): <c>GET /</c> → 200 with the name as body, <c>GET /healthz</c> → 200 "ok"
/// (503 while the --health-file exists); every response carries <c>X-Server: name</c>.</item>
/// <item>TCP echo: each line received is sent back as <c>name line</c>.</item>
/// <item>UDP echo: each datagram is sent back as <c>name payload</c>, from the address it was sent to.</item>
/// </list>
/// Dual-stack. Prints <c>READY …</c> once every socket is bound. Stops by itself after --lifetime, on
/// SIGTERM/SIGINT, or (with --exit-on-stdin-eof) when its parent closes stdin.
/// </summary>
public sealed class Serve
{
    private const int MaxConnections = 4096;
    private const int MaxHeaderBytes = 16 * 1024;
    private const int MaxRequestsPerConnection = 100_000;
    private const int MaxLineBytes = 4096;
    private static readonly TimeSpan HttpIdle = TimeSpan.FromSeconds(60);

    private readonly string _name;
    private readonly byte[] _namePrefix;
    private readonly int _http, _echo, _udp;
    private readonly IPAddress? _bind;
    private readonly TimeSpan _lifetime, _echoIdle;
    private readonly string? _healthFile;
    private readonly bool _exitOnStdinEof, _verbose;
    private int _active;

    private Serve(Args a)
    {
        _name = a.RequiredString("name");
        if (_name.Length == 0 || _name.Any(c => c <= ' ' || c > '~')) throw new UsageException("--name must be printable ASCII without spaces");
        _namePrefix = Encoding.ASCII.GetBytes(_name + " ");
        _http = a.Int("http", 80, 0, 65535);
        _echo = a.Int("echo", 9000, 0, 65535);
        _udp = a.Int("udp", 9001, 0, 65535);
        _bind = a.Address("bind");
        _lifetime = a.Duration("lifetime", TimeSpan.FromMinutes(30), TimeSpan.FromHours(24));
        _echoIdle = a.Duration("echo-idle", TimeSpan.FromMinutes(5), TimeSpan.FromHours(1));
        _healthFile = a.String("health-file");
        _exitOnStdinEof = a.Flag("exit-on-stdin-eof");
        _verbose = a.Flag("verbose");
        a.RejectUnknown();
        if (_http == 0 && _echo == 0 && _udp == 0) throw new UsageException("nothing to serve: --http, --echo and --udp are all 0");
    }

    public static async Task<int> RunAsync(Args a)
    {
        var serve = new Serve(a);
        return await serve.RunAsync();
    }

    private async Task<int> RunAsync()
    {
        using var stop = new CancellationTokenSource(_lifetime);
        using var term = Signals.OnTerminate(stop);
        if (_exitOnStdinEof) Signals.CancelOnStdinEof(stop);

        var tasks = new List<Task>();
        var sockets = new List<Socket>();
        try
        {
            if (_http != 0)
            {
                var l = Listen(_http);
                sockets.Add(l);
                tasks.Add(AcceptLoop(l, HandleHttpAsync, stop.Token));
            }
            if (_echo != 0)
            {
                var l = Listen(_echo);
                sockets.Add(l);
                tasks.Add(AcceptLoop(l, HandleEchoAsync, stop.Token));
            }
            if (_udp != 0) tasks.Add(UdpAsync(stop.Token));
        }
        catch (SocketException e)
        {
            foreach (var s in sockets) s.Dispose();
            await Console.Error.WriteLineAsync($"serve: cannot listen: {e.SocketErrorCode} ({e.Message})");
            return 1;
        }

        await Warmup.SelfTestAsync(_bind, _http, _echo, _udp);
        Console.Out.WriteLine($"READY name={_name} http={_http} echo={_echo} udp={_udp}");
        Console.Out.Flush();
        try
        {
            await Task.WhenAll(tasks);
        }
        catch (OperationCanceledException)
        {
            // Stopped.
        }
        finally
        {
            foreach (var s in sockets) s.Dispose();
        }
        var why = stop.IsCancellationRequested ? "stopped" : "ended";
        Console.Out.WriteLine($"EXIT name={_name} {why}");
        return 0;
    }

    private Socket Listen(int port)
    {
        var s = Bind(SocketType.Stream, ProtocolType.Tcp, port, _bind);
        s.Listen(1024);
        return s;
    }

    /// <summary>Binds to <paramref name="address"/>, or dual-stack [::] (IPv4 0.0.0.0 where IPv6 is off).</summary>
    private static Socket Bind(SocketType type, ProtocolType protocol, int port, IPAddress? address)
    {
        if (address is not null)
        {
            var one = new Socket(address.AddressFamily, type, protocol);
            try
            {
                one.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                if (address.AddressFamily == AddressFamily.InterNetworkV6) one.DualMode = address.Equals(IPAddress.IPv6Any);
                one.Bind(new IPEndPoint(address, port));
                return one;
            }
            catch
            {
                one.Dispose();
                throw;
            }
        }
        Socket? s = null;
        try
        {
            s = new Socket(AddressFamily.InterNetworkV6, type, protocol) { DualMode = true };
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            s.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
            return s;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.AddressFamilyNotSupported or SocketError.AddressNotAvailable)
        {
            s?.Dispose();
            var v4 = new Socket(AddressFamily.InterNetwork, type, protocol);
            v4.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            v4.Bind(new IPEndPoint(IPAddress.Any, port));
            return v4;
        }
        catch
        {
            s?.Dispose();
            throw;
        }
    }

    private async Task AcceptLoop(Socket listener, Func<Socket, CancellationToken, Task> handler, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            if (Interlocked.Increment(ref _active) > MaxConnections)
            {
                Interlocked.Decrement(ref _active);
                client.Dispose();
                continue;
            }
            _ = Task.Run(async () =>
            {
                try
                {
                    client.NoDelay = true;
                    await handler(client, ct);
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or ObjectDisposedException)
                {
                    if (_verbose) Console.Error.WriteLine($"connection ended: {e.GetType().Name}: {e.Message}");
                }
                finally
                {
                    client.Dispose();
                    Interlocked.Decrement(ref _active);
                }
            }, CancellationToken.None);
        }
    }

    private async Task HandleHttpAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[MaxHeaderBytes];
        var filled = 0;
        for (var served = 0; served < MaxRequestsPerConnection; served++)
        {
            using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
            idle.CancelAfter(HttpIdle);
            int headerEnd;
            while ((headerEnd = buf.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
            {
                if (filled == buf.Length)
                {
                    await s.SendAsync(Response(431, "request header too large\n", close: true, head: false), idle.Token);
                    return;
                }
                var n = await s.ReceiveAsync(buf.AsMemory(filled), SocketFlags.None, idle.Token);
                if (n == 0) return;
                filled += n;
            }
            var head = Encoding.ASCII.GetString(buf, 0, headerEnd);
            var consumed = headerEnd + 4;
            var lines = head.Split("\r\n");
            var parts = lines[0].Split(' ');
            if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
            {
                await s.SendAsync(Response(400, "bad request line\n", close: true, head: false), idle.Token);
                return;
            }
            var method = parts[0];
            var path = parts[1];
            var q = path.IndexOf('?', StringComparison.Ordinal);
            if (q >= 0) path = path[..q];
            var close = parts[2] == "HTTP/1.0";
            long contentLength = 0;
            foreach (var line in lines.Skip(1))
            {
                var colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon <= 0) continue;
                var name = line[..colon].Trim();
                var value = line[(colon + 1)..].Trim();
                if (name.Equals("Connection", StringComparison.OrdinalIgnoreCase))
                {
                    if (value.Contains("close", StringComparison.OrdinalIgnoreCase)) close = true;
                    else if (value.Contains("keep-alive", StringComparison.OrdinalIgnoreCase)) close = false;
                }
                else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
                {
                    if (!long.TryParse(value, out contentLength) || contentLength is < 0 or > 1 << 20)
                    {
                        await s.SendAsync(Response(413, "body too large\n", close: true, head: false), idle.Token);
                        return;
                    }
                }
            }

            // Discard a body (none is expected), then keep what follows for the next request.
            var inBuffer = Math.Min(contentLength, filled - consumed);
            consumed += (int)inBuffer;
            var toSkip = contentLength - inBuffer;
            Buffer.BlockCopy(buf, consumed, buf, 0, filled - consumed);
            filled -= consumed;
            while (toSkip > 0)
            {
                var n = await s.ReceiveAsync(buf.AsMemory(0, (int)Math.Min(buf.Length, toSkip)), SocketFlags.None, idle.Token);
                if (n == 0) return;
                toSkip -= n;
            }

            var isHead = method == "HEAD";
            byte[] response;
            if (method is not ("GET" or "HEAD")) response = Response(405, "only GET and HEAD\n", close, isHead);
            else if (path == "/") response = Response(200, _name + "\n", close, isHead);
            else if (path == "/healthz")
                response = _healthFile is not null && File.Exists(_healthFile)
                    ? Response(503, "unhealthy\n", close, isHead)
                    : Response(200, "ok\n", close, isHead);
            else response = Response(404, "not found\n", close, isHead);
            await s.SendAsync(response, idle.Token);
            if (_verbose) Console.Error.WriteLine($"{s.RemoteEndPoint} {method} {path}");
            if (close)
            {
                s.Shutdown(SocketShutdown.Send);
                return;
            }
        }
    }

    private byte[] Response(int status, string body, bool close, bool head)
    {
        var reason = status switch
        {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Status",
        };
        var text = $"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body.Length}\r\n" +
                   $"X-Server: {_name}\r\nConnection: {(close ? "close" : "keep-alive")}\r\n\r\n{(head ? "" : body)}";
        return Encoding.ASCII.GetBytes(text);
    }

    private async Task HandleEchoAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[MaxLineBytes];
        var filled = 0;
        while (true)
        {
            using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
            idle.CancelAfter(_echoIdle);
            int nl;
            while ((nl = buf.AsSpan(0, filled).IndexOf((byte)'\n')) < 0)
            {
                if (filled == buf.Length) return; // A line longer than allowed: hang up.
                var n = await s.ReceiveAsync(buf.AsMemory(filled), SocketFlags.None, idle.Token);
                if (n == 0) return;
                filled += n;
            }
            var reply = new byte[_namePrefix.Length + nl + 1];
            _namePrefix.CopyTo(reply, 0);
            Buffer.BlockCopy(buf, 0, reply, _namePrefix.Length, nl + 1);
            await s.SendAsync(reply, idle.Token);
            Buffer.BlockCopy(buf, nl + 1, buf, 0, filled - nl - 1);
            filled -= nl + 1;
        }
    }

    /// <summary>
    /// UDP echo. A reply must leave from the address the request was sent to (the VIP on lo, in direct
    /// server return), which a wildcard socket cannot choose, so there is one socket per local address,
    /// and addresses added later (a VIP assigned after start) get theirs within a second.
    /// </summary>
    private async Task UdpAsync(CancellationToken ct)
    {
        if (_bind is not null)
        {
            using var one = Bind(SocketType.Dgram, ProtocolType.Udp, _udp, _bind);
            await UdpLoop(one, ct);
            return;
        }
        var bound = new Dictionary<IPAddress, Socket>();
        var loops = new List<Task>();
        try
        {
            while (!ct.IsCancellationRequested)
            {
                foreach (var address in LocalAddresses())
                {
                    if (bound.ContainsKey(address)) continue;
                    try
                    {
                        var s = Bind(SocketType.Dgram, ProtocolType.Udp, _udp, address);
                        bound[address] = s;
                        loops.Add(UdpLoop(s, ct));
                    }
                    catch (SocketException e)
                    {
                        if (_verbose) Console.Error.WriteLine($"udp: cannot bind {address}: {e.SocketErrorCode}");
                    }
                }
                if (bound.Count == 0) throw new SocketException((int)SocketError.AddressNotAvailable);
                await Task.Delay(TimeSpan.FromSeconds(1), ct);
            }
        }
        catch (OperationCanceledException)
        {
            // Stopped.
        }
        finally
        {
            foreach (var s in bound.Values) s.Dispose();
        }
        await Task.WhenAll(loops);
    }

    private static IEnumerable<IPAddress> LocalAddresses()
    {
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            if (nic.OperationalStatus == OperationalStatus.Down) continue;
            foreach (var u in nic.GetIPProperties().UnicastAddresses)
            {
                var a = u.Address;
                if (a.AddressFamily == AddressFamily.InterNetworkV6 && (a.IsIPv6LinkLocal || a.IsIPv6Multicast)) continue;
                if (a.AddressFamily == AddressFamily.InterNetworkV6) a = new IPAddress(a.GetAddressBytes()); // drop any scope id
                yield return a;
            }
        }
    }

    private async Task UdpLoop(Socket s, CancellationToken ct)
    {
        var buf = new byte[2048];
        var reply = new byte[_namePrefix.Length + buf.Length];
        _namePrefix.CopyTo(reply, 0);
        EndPoint any = s.AddressFamily == AddressFamily.InterNetworkV6 ? new IPEndPoint(IPAddress.IPv6Any, 0) : new IPEndPoint(IPAddress.Any, 0);
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var r = await s.ReceiveFromAsync(buf, SocketFlags.None, any, ct);
                Buffer.BlockCopy(buf, 0, reply, _namePrefix.Length, r.ReceivedBytes);
                await s.SendToAsync(reply.AsMemory(0, _namePrefix.Length + r.ReceivedBytes), SocketFlags.None, r.RemoteEndPoint, ct);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (SocketException e)
            {
                // ICMP errors from earlier replies surface here; keep serving.
                if (_verbose) Console.Error.WriteLine($"udp: {e.SocketErrorCode}");
            }
            catch (ObjectDisposedException)
            {
                return;
            }
        }
    }
}
