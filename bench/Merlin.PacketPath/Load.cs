using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Merlin.Linux;

namespace Merlin.PacketPath;

/// <summary>What a generator did: messages sent, sends the kernel refused, and how long it took.</summary>
public sealed record LoadResult(long Sent, long Refused, TimeSpan Elapsed)
{
    public double Rate => Sent / Elapsed.TotalSeconds;
}

/// <summary>
/// A fixed-rate load from inside a namespace over <c>flows</c> sockets (one source port each, so the load balancer
/// sees that many flows), a message of <see cref="PayloadBytes"/> at a time: UDP datagrams, or TCP segments on
/// connections opened when the load is (TCP_NODELAY, so each send is a segment while the window allows). Each
/// <see cref="Run"/> is bounded by a message count and by time. It paces against a clock (sends what is due,
/// then sleeps a millisecond), so a late wake-up sends a short burst rather than lowering the rate.
/// </summary>
public sealed class Load : IDisposable
{
    public const int PayloadBytes = 64;

    private readonly List<Socket> _sockets;
    private readonly IPEndPoint _target;
    private readonly bool _tcp;

    private Load(List<Socket> sockets, IPEndPoint target, bool tcp)
    {
        _sockets = sockets;
        _target = target;
        _tcp = tcp;
    }

    /// <summary>Opens <paramref name="flows"/> sockets in <paramref name="ns"/>; for TCP, connected to <paramref name="target"/>.</summary>
    public static Load Open(string ns, IPEndPoint target, int flows, bool tcp)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(flows, 1);
        var sockets = new List<Socket>(flows);
        try
        {
            for (var i = 0; i < flows; i++)
            {
                var s = NetworkNamespace.CreateSocket(ns, AddressFamily.InterNetwork, tcp ? SocketType.Stream : SocketType.Dgram, tcp ? ProtocolType.Tcp : ProtocolType.Udp);
                sockets.Add(s);
                if (tcp)
                {
                    s.NoDelay = true;
                    s.SendTimeout = 2_000;
                    using var connect = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                    s.ConnectAsync(target, connect.Token).AsTask().GetAwaiter().GetResult();
                }
                else s.Bind(new IPEndPoint(IPAddress.Any, 0));
            }
            return new Load(sockets, target, tcp);
        }
        catch
        {
            foreach (var s in sockets) s.Dispose();
            throw;
        }
    }

    public LoadResult Run(int rate, TimeSpan duration, CancellationToken ct)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rate, 1);
        var count = (long)(rate * duration.TotalSeconds);
        var limit = duration + TimeSpan.FromSeconds(2);   // a starved generator stops rather than run on
        var payload = new byte[PayloadBytes];
        long sent = 0, refused = 0;
        var clock = Stopwatch.StartNew();
        while (sent < count && clock.Elapsed < limit && !ct.IsCancellationRequested)
        {
            var due = Math.Min(count, (long)(clock.Elapsed.TotalSeconds * rate));
            for (; sent < due; sent++)
            {
                var s = _sockets[(int)(sent % _sockets.Count)];
                try
                {
                    if (_tcp) s.Send(payload);
                    else s.SendTo(payload, _target);
                }
                catch (SocketException)
                {
                    refused++;   // ENOBUFS, a send timeout and the like: counted, the load goes on
                }
            }
            Thread.Sleep(1);
        }
        return new LoadResult(sent, refused, clock.Elapsed);
    }

    public void Dispose()
    {
        foreach (var s in _sockets) s.Dispose();
    }
}

/// <summary>
/// A TCP discard server inside a namespace: accepts on the port and reads until each connection closes, so a
/// TCP load has sockets to go to. Stops, and closes what it accepted, when disposed.
/// </summary>
public sealed class DiscardServer : IDisposable
{
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _accepted = [];

    public DiscardServer(string ns, int port)
    {
        _listener = NetworkNamespace.CreateSocket(ns, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Any, port));
        _listener.Listen(1024);
        _ = Task.Run(AcceptAsync);
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try
            {
                s = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }
            lock (_accepted) _accepted.Add(s);
            _ = Task.Run(async () =>
            {
                var buffer = new byte[64 * 1024];
                try
                {
                    while (await s.ReceiveAsync(buffer, SocketFlags.None, _stop.Token) > 0) { }
                }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
                {
                    // stopped, or the client went away
                }
                lock (_accepted) _accepted.Remove(s);
                s.Dispose();
            });
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        lock (_accepted)
        {
            foreach (var s in _accepted) s.Dispose();
            _accepted.Clear();
        }
    }
}
