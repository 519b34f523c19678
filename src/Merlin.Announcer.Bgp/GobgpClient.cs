using System.Net;
using System.Net.Sockets;
using Apipb;
using Grpc.Core;
using Grpc.Net.Client;

namespace Merlin.Announcer.Bgp;

/// <summary>One BGP session as gobgpd reports it.</summary>
/// <param name="Advertised">Routes this node has sent the peer and not withdrawn (its Adj-RIB-Out), all families.</param>
public sealed record BgpSession(IPAddress Address, uint Asn, string State, ulong Advertised)
{
    public bool Established => State == "ESTABLISHED";
}

/// <summary>
/// gobgpd's gRPC API over its Unix socket (root-only, so no port to collide on or to protect). Each call
/// has a deadline: a gobgpd that stops answering is treated as dead and restarted.
/// </summary>
internal sealed class GobgpClient : IDisposable
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(5);
    private readonly GrpcChannel _channel;
    private readonly GobgpApi.GobgpApiClient _api;

    public GobgpClient(string socketPath)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        // The authority is not used by gobgpd; the connect callback picks the socket.
        _channel = GrpcChannel.ForAddress("http://gobgpd", new GrpcChannelOptions { HttpHandler = handler });
        _api = new GobgpApi.GobgpApiClient(_channel);
    }

    private static CallOptions Options(CancellationToken ct) => new(deadline: DateTime.UtcNow + CallTimeout, cancellationToken: ct);

    /// <summary>The running BGP instance's AS, or 0 while StartBgp has not been called.</summary>
    public async Task<uint> GetAsnAsync(CancellationToken ct) => (await _api.GetBgpAsync(new GetBgpRequest(), Options(ct))).Global?.Asn ?? 0;

    public async Task StartAsync(BgpOptions o, CancellationToken ct)
    {
        // ListenPort -1: no BGP listener at all; merlin dials the routers, which need no way in.
        var global = new Global { Asn = o.LocalAsn, RouterId = o.RouterId.ToString(), ListenPort = -1 };
        await _api.StartBgpAsync(new StartBgpRequest { Global = global }, Options(ct));
    }

    public async Task AddPeerAsync(BgpOptions o, BgpPeer peer, CancellationToken ct)
    {
        var v6 = peer.Address.AddressFamily == AddressFamily.InterNetworkV6;
        var p = new Peer
        {
            Conf = new PeerConf { NeighborAddress = peer.Address.ToString(), PeerAsn = peer.Asn },
            Timers = new Timers
            {
                Config = new TimersConfig
                {
                    HoldTime = (ulong)o.HoldTime.TotalSeconds,
                    KeepaliveInterval = (ulong)o.Keepalive.TotalSeconds,
                    ConnectRetry = 5, // gobgpd's floor
                },
            },
        };
        if ((v6 ? o.LocalAddress6 : o.LocalAddress) is { } local) p.Transport = new Transport { LocalAddress = local.ToString() };
        // One family per session: an IPv4 peer carries the IPv4 VIPs, an IPv6 peer the IPv6 ones.
        p.AfiSafis.Add(new AfiSafi { Config = new AfiSafiConfig { Family = v6 ? GobgpPaths.Ipv6 : GobgpPaths.Ipv4, Enabled = true } });
        await _api.AddPeerAsync(new AddPeerRequest { Peer = p }, Options(ct));
    }

    public async Task<IReadOnlyList<BgpSession>> ListPeersAsync(CancellationToken ct)
    {
        var sessions = new List<BgpSession>();
        using var call = _api.ListPeer(new ListPeerRequest { EnableAdvertised = true }, Options(ct));
        await foreach (var r in call.ResponseStream.ReadAllAsync(ct))
        {
            var peer = r.Peer;
            if (peer?.Conf is null || !IPAddress.TryParse(peer.Conf.NeighborAddress, out var address)) continue;
            var state = peer.State?.SessionState.ToString().ToUpperInvariant() ?? "UNKNOWN";
            var advertised = peer.AfiSafis.Aggregate(0UL, (n, a) => n + (a.State?.Advertised ?? 0));
            sessions.Add(new BgpSession(address, peer.Conf.PeerAsn, state, advertised));
        }
        return sessions;
    }

    public async Task AddPathAsync(IPAddress vip, CancellationToken ct) =>
        await _api.AddPathAsync(new AddPathRequest { TableType = TableType.Global, Path = GobgpPaths.HostRoute(vip) }, Options(ct));

    public async Task DeletePathAsync(IPAddress vip, CancellationToken ct) =>
        await _api.DeletePathAsync(new DeletePathRequest { TableType = TableType.Global, Family = GobgpPaths.FamilyOf(vip), Path = GobgpPaths.HostRoute(vip) }, Options(ct));

    /// <summary>Withdraws every path added through the API, in every family (no family, no path: all of them).</summary>
    public async Task DeleteAllPathsAsync(CancellationToken ct) =>
        await _api.DeletePathAsync(new DeletePathRequest { TableType = TableType.Global }, Options(ct));

    public void Dispose() => _channel.Dispose();
}
