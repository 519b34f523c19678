using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Lab.Server;

/// <summary>
/// A fresh .NET process compiles its socket and parsing code on first use, which on a busy machine can take
/// longer than a request timeout. Servers and clients therefore run their own code once over loopback
/// before they report ready or start their clock, so the first measured request is not the slow one.
/// Best effort: bounded, and any failure is ignored.
/// </summary>
public static class Warmup
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(5);

    /// <summary>Loopback of the target's family (the code paths differ a little between IPv4 and IPv6).</summary>
    public static IPAddress LoopbackFor(AddressFamily family) =>
        family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback;

    /// <summary>Runs <paramref name="work"/> against a loopback responder that answers like a lab server.</summary>
    public static async Task RunAsync(AddressFamily family, SocketType type, Func<IPEndPoint, CancellationToken, Task> work)
    {
        using var cts = new CancellationTokenSource(Limit);
        try
        {
            using var listener = new Socket(family, type, type == SocketType.Stream ? ProtocolType.Tcp : ProtocolType.Udp);
            listener.Bind(new IPEndPoint(LoopbackFor(family), 0));
            var ep = (IPEndPoint)listener.LocalEndPoint!;
            Task responder;
            if (type == SocketType.Stream)
            {
                listener.Listen(1);
                responder = RespondTcpAsync(listener, cts.Token);
            }
            else
            {
                responder = RespondUdpAsync(listener, cts.Token);
            }
            await work(ep, cts.Token);
            await cts.CancelAsync();
            await responder.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or InvalidDataException or ObjectDisposedException)
        {
            // No loopback here, or too slow: carry on cold.
        }
    }

    /// <summary>Answers one TCP connection: an HTTP request with a 200, or echo lines as "warmup LINE".</summary>
    private static async Task RespondTcpAsync(Socket listener, CancellationToken ct)
    {
        using var s = await listener.AcceptAsync(ct);
        var buf = new byte[4096];
        var filled = 0;
        while (true)
        {
            var n = await s.ReceiveAsync(buf.AsMemory(filled), SocketFlags.None, ct);
            if (n == 0) return;
            filled += n;
            var text = Encoding.ASCII.GetString(buf, 0, filled);
            if (text.StartsWith("GET ", StringComparison.Ordinal))
            {
                if (!text.Contains("\r\n\r\n", StringComparison.Ordinal)) continue;
                await s.SendAsync("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Server: warmup\r\nConnection: close\r\n\r\nwarmup\n"u8.ToArray(), ct);
                return;
            }
            var nl = text.IndexOf('\n', StringComparison.Ordinal);
            if (nl < 0) continue;
            await s.SendAsync(Encoding.ASCII.GetBytes("warmup " + text[..(nl + 1)]), ct);
            Buffer.BlockCopy(buf, nl + 1, buf, 0, filled - nl - 1);
            filled -= nl + 1;
        }
    }

    private static async Task RespondUdpAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[2048];
        EndPoint any = new IPEndPoint(s.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
        var r = await s.ReceiveFromAsync(buf, SocketFlags.None, any, ct);
        var reply = Encoding.ASCII.GetBytes("warmup " + Encoding.ASCII.GetString(buf, 0, r.ReceivedBytes));
        await s.SendToAsync(reply, SocketFlags.None, r.RemoteEndPoint, ct);
    }

    /// <summary>A server's own check before READY: one request to each of its ports over loopback.</summary>
    public static async Task SelfTestAsync(IPAddress? bind, int http, int echo, int udp)
    {
        var target = bind is null || bind.Equals(IPAddress.IPv6Any) || bind.Equals(IPAddress.Any) ? IPAddress.Loopback : bind;
        using var cts = new CancellationTokenSource(Limit);
        try
        {
            if (http != 0)
            {
                using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(new IPEndPoint(target, http), cts.Token);
                await s.SendAsync("GET /healthz HTTP/1.1\r\nHost: warmup\r\nConnection: close\r\n\r\n"u8.ToArray(), cts.Token);
                await DrainAsync(s, cts.Token);
            }
            if (echo != 0)
            {
                using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(new IPEndPoint(target, echo), cts.Token);
                await s.SendAsync("warmup\n"u8.ToArray(), cts.Token);
                await s.ReceiveAsync(new byte[256], SocketFlags.None, cts.Token);
            }
            if (udp != 0)
            {
                using var s = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                await s.ConnectAsync(new IPEndPoint(target, udp), cts.Token);
                await s.SendAsync("warmup"u8.ToArray(), SocketFlags.None, cts.Token);
                await s.ReceiveAsync(new byte[256], SocketFlags.None, cts.Token);
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
        {
            // Not reachable over loopback (a specific --bind, or no lo): serve cold.
        }
    }

    private static async Task DrainAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[1024];
        while (await s.ReceiveAsync(buf, SocketFlags.None, ct) > 0)
        {
            // Until the server closes.
        }
    }
}
