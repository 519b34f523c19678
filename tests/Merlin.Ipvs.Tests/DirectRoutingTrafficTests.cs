using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Merlin.Hashing;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Testing;

namespace Merlin.Ipvs.Tests;

/// <summary>
/// Real TCP through a real IPVS, programmed by our own client opened in the load balancer's namespace, in direct
/// routing (DR), on a <see cref="TrafficLab"/>: a client, lb and two real servers in namespaces on a bridge.
/// Servers and clients are sockets of this process, opened inside the namespaces (a socket keeps the namespace
/// it was made in): under the guest's emulation, starting a process per server or client costs seconds.
/// </summary>
[Trait("Kernel", "ipvs")]
public sealed class DirectRoutingTrafficTests
{
    private const ushort Port = 80;
    private const int Connections = 200;
    private const int Concurrency = 8;
    private const int ReplyBytes = 4096;
    private static readonly TimeSpan ConnectionTimeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Maglev_WithPortHashing_OverDirectRouting_SpreadsAsTheKernelModelSays_AndRepliesBypassTheLb()
    {
        Requires.Ipvs();
        Requires.Root();
        Requires.Command("ip", "apt-get install iproute2");
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        deadline.CancelAfter(TimeSpan.FromMinutes(4));
        var ct = deadline.Token;

        using var lab = TrafficLab.Create(realServers: 2);
        await using var servers = new ServerSet();
        foreach (var rs in lab.RealServers) servers.Start(rs.Name, rs.Namespace, Port);

        using var ipvs = IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = lab.Lb.Namespace });
        var service = ServiceKey.ForAddress(TrafficLab.Vip, Port, Protocol.Tcp);
        ipvs.NewService(service, new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2 }); // mh-port: one client, many flows
        foreach (var rs in lab.RealServers)
            ipvs.NewDestination(service, new RealServerKey(rs.Address, Port), new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route });

        var lbBefore = TrafficLab.Counters(lab.Lb);
        var flows = await RunClientsAsync(lab.Client.Namespace, new IPEndPoint(TrafficLab.Vip, Port), ct);
        var lbAfter = TrafficLab.Counters(lab.Lb);

        var failures = flows.Where(f => f.Error is not null).ToList();
        Assert.True(failures.Count == 0,
            $"{failures.Count} of {Connections} connections failed, e.g. {string.Join("; ", failures.Take(5).Select(f => f.Error))}\n{lab.Describe()}");

        // Both servers serve, each a fair share (two equal weights over 4093 slots: about half each).
        var perServer = flows.GroupBy(f => f.Server!).ToDictionary(g => g.Key, g => g.Count());
        foreach (var rs in lab.RealServers)
        {
            var n = perServer.GetValueOrDefault(rs.Name);
            Assert.True(n >= Connections / 5, $"{rs.Name} served {n} of {Connections}: {string.Join(", ", perServer.Select(p => $"{p.Key}={p.Value}"))}");
            Assert.Equal(n, servers.Served(rs.Name));
        }

        // Every flow went where Merlin.Hashing's model of ip_vs_mh says: same table, same hash of source address and port.
        var model = KernelMh.Build(lab.RealServers.Select(rs => IpvsDest.Create(rs.Address, Port, 1)).ToList());
        var misplaced = flows
            .Select(f => (f.SourcePort, f.Server, Model: lab.RealServers[model.Schedule(FlowKey.From(lab.Client.Address, f.SourcePort), hashPort: true, fallback: false)].Name))
            .Where(f => f.Server != f.Model)
            .ToList();
        Assert.True(misplaced.Count == 0,
            $"{misplaced.Count} flows not where the mh model puts them, e.g. {string.Join(", ", misplaced.Take(5).Select(m => $"port {m.SourcePort}: {m.Server}, model {m.Model}"))}");

        // Direct routing: IPVS saw every connection inbound and no packet outbound; lb received less than the
        // replies alone weigh, so the replies went from the real servers straight to the client.
        // The kernel folds its per-CPU counters into the ones it reports on its estimator's timer (every 2 s), which a
        // slow emulated guest can run late: read until they hold every connection, for at most 10 s.
        var stats = Assert.Single(ipvs.GetServices(ct)).Stats;
        for (var until = DateTime.UtcNow.AddSeconds(10); stats.Connections < (ulong)Connections && DateTime.UtcNow < until; stats = Assert.Single(ipvs.GetServices(ct)).Stats)
            await Task.Delay(250, ct);
        Assert.Equal((ulong)Connections, stats.Connections);
        Assert.True(stats.InPackets >= 3 * Connections, $"IPVS in-packets {stats.InPackets}");
        Assert.Equal(0UL, stats.OutPackets);
        var replyBytes = (long)Connections * ReplyBytes;
        var lbReceived = lbAfter.RxBytes - lbBefore.RxBytes;
        Assert.True(lbReceived < replyBytes / 2, $"lb received {lbReceived} bytes while the replies carried {replyBytes}");
    }

    private sealed record Flow(int Index, ushort SourcePort, string? Server, string? Error);

    /// <summary>
    /// <see cref="Connections"/> connections to <paramref name="target"/>, <see cref="Concurrency"/> at a time,
    /// each with its own deadline: send one line, read the reply to its end, check it.
    /// </summary>
    private static async Task<IReadOnlyList<Flow>> RunClientsAsync(string clientNamespace, IPEndPoint target, CancellationToken ct)
    {
        var sockets = Enumerable.Range(0, Connections).Select(_ => NetworkNamespace.CreateSocket(clientNamespace, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)).ToArray();
        try
        {
            var flows = new Flow[Connections];
            var next = -1;
            await Task.WhenAll(Enumerable.Range(0, Concurrency).Select(_ => Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < Connections) flows[i] = await OneAsync(i, sockets[i], target, ct);
            }, ct)));
            return flows;
        }
        finally
        {
            foreach (var s in sockets) s.Dispose();
        }
    }

    private static async Task<Flow> OneAsync(int index, Socket socket, IPEndPoint target, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(ConnectionTimeout);
        ushort port = 0;
        try
        {
            await socket.ConnectAsync(target, timeout.Token);
            port = (ushort)((IPEndPoint)socket.LocalEndPoint!).Port;
            await socket.SendAsync("hello\n"u8.ToArray(), SocketFlags.None, timeout.Token);
            var reply = new MemoryStream();
            var buffer = new byte[8192];
            int n;
            while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token)) > 0)
            {
                reply.Write(buffer, 0, n);
                if (reply.Length > ReplyBytes) break;
            }
            var text = Encoding.ASCII.GetString(reply.GetBuffer(), 0, (int)reply.Length);
            var newline = text.IndexOf('\n');
            if (reply.Length != ReplyBytes || newline < 1) return new Flow(index, port, null, $"port {port}: a reply of {reply.Length} bytes: {text[..Math.Min(40, text.Length)]}");
            return new Flow(index, port, text[..newline], null);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
        {
            var what = e is OperationCanceledException && !ct.IsCancellationRequested ? $"no reply within {ConnectionTimeout.TotalSeconds} s" : e.Message;
            return new Flow(index, port, null, $"connection {index} (port {port}): {what}");
        }
    }

    /// <summary>
    /// One tiny server per real server: a listening socket opened inside its namespace; each connection gets one
    /// reply of <see cref="ReplyBytes"/> bytes that starts with the server's name, then the server closes it.
    /// </summary>
    private sealed class ServerSet : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly List<(Socket Listener, Task Loop)> _servers = [];
        private readonly ConcurrentDictionary<string, int> _served = new();
        private readonly ConcurrentDictionary<Task, byte> _connections = new();

        public int Served(string name) => _served.GetValueOrDefault(name);

        public void Start(string name, string ns, int port)
        {
            // Made in the namespace, bound and listening from here: a socket keeps the namespace it was made in.
            var listener = NetworkNamespace.CreateSocket(ns, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                listener.Bind(new IPEndPoint(IPAddress.Any, port));
                listener.Listen(256);
            }
            catch
            {
                listener.Dispose();
                throw;
            }
            var reply = new byte[ReplyBytes];
            reply.AsSpan().Fill((byte)'x');
            Encoding.ASCII.GetBytes(name + "\n").CopyTo(reply, 0);
            _servers.Add((listener, Task.Run(() => AcceptLoopAsync(name, listener, reply))));
        }

        private async Task AcceptLoopAsync(string name, Socket listener, byte[] reply)
        {
            while (!_stop.IsCancellationRequested)
            {
                Socket connection;
                try
                {
                    connection = await listener.AcceptAsync(_stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
                {
                    return;
                }
                var serve = ServeAsync(name, connection, reply);
                _connections.TryAdd(serve, 0);
                _ = serve.ContinueWith(t => _connections.TryRemove(t, out _), TaskScheduler.Default);
            }
        }

        private async Task ServeAsync(string name, Socket connection, byte[] reply)
        {
            using var _ = connection;
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(ConnectionTimeout);
            try
            {
                var buffer = new byte[256];
                var read = 0;
                while (read < buffer.Length)
                {
                    var n = await connection.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, timeout.Token);
                    if (n == 0) return;
                    read += n;
                    if (Array.IndexOf(buffer, (byte)'\n', 0, read) >= 0) break;
                }
                await connection.SendAsync(reply, SocketFlags.None, timeout.Token);
                _served.AddOrUpdate(name, 1, (_, c) => c + 1);
                connection.Shutdown(SocketShutdown.Both);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                // The client sees it: a short or missing reply.
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            foreach (var (listener, _) in _servers) listener.Dispose();
            await Task.WhenAll(_servers.Select(s => s.Loop).Concat(_connections.Keys)).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            _stop.Dispose();
        }
    }
}
