using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Merlin.Linux;

namespace Merlin.PacketPath;

/// <summary>What the generator did: packets sent, sends the kernel refused, and how long it took.</summary>
public sealed record UdpLoadResult(long Sent, long Refused, TimeSpan Elapsed)
{
    public double Rate => Sent / Elapsed.TotalSeconds;
}

/// <summary>
/// A fixed-rate UDP load from inside a namespace: <c>rate</c> packets a second spread over
/// <c>flows</c> sockets (one source port each, so the load balancer sees that many flows), bounded by a
/// packet count and by time. It paces against a clock (sends what is due, then sleeps a millisecond), so a
/// late wake-up sends a short burst rather than lowering the rate.
/// </summary>
public static class UdpLoad
{
    public const int PayloadBytes = 64;

    public static UdpLoadResult Run(string ns, IPEndPoint target, int rate, TimeSpan duration, int flows, CancellationToken ct)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rate, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(flows, 1);
        var count = (long)(rate * duration.TotalSeconds);
        var limit = duration + TimeSpan.FromSeconds(2);   // a starved generator stops rather than run on
        var sockets = new List<Socket>(flows);
        try
        {
            for (var i = 0; i < flows; i++)
            {
                var s = NetworkNamespace.CreateSocket(ns, AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                sockets.Add(s);
                s.Bind(new IPEndPoint(IPAddress.Any, 0));
            }
            var payload = new byte[PayloadBytes];
            long sent = 0, refused = 0;
            var clock = Stopwatch.StartNew();
            while (sent < count && clock.Elapsed < limit && !ct.IsCancellationRequested)
            {
                var due = Math.Min(count, (long)(clock.Elapsed.TotalSeconds * rate));
                for (; sent < due; sent++)
                {
                    try
                    {
                        sockets[(int)(sent % flows)].SendTo(payload, target);
                    }
                    catch (SocketException)
                    {
                        refused++;   // ENOBUFS and the like: counted, the load goes on
                    }
                }
                Thread.Sleep(1);
            }
            return new UdpLoadResult(sent, refused, clock.Elapsed);
        }
        finally
        {
            foreach (var s in sockets) s.Dispose();
        }
    }
}
