using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Merlin.Testing;
using Merlin.Contracts;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Daemon.Tests;

/// <summary>
/// One daemon with every API credential on (TLS, client certificates from <see cref="Pki"/>, bearer tokens,
/// a Unix socket) on loopback, seeded with service <c>web</c> and servers 198.18.1.21:80 and 198.18.1.99:80;
/// and clients that present any identity.
/// </summary>
public sealed class SecuredDaemon : IAsyncLifetime
{
    public const string AdminToken = "admin-token-0123456789abcdef";
    public const string OwnToken = "realserver-21-token-0123456789";
    public const string OtherToken = "realserver-99-token-0123456789";
    public static readonly IPAddress OwnIp = IPAddress.Parse("198.18.1.21");
    public static readonly IPAddress OtherIp = IPAddress.Parse("198.18.1.99");

    private readonly TempDir _dir = new("secured");
    private readonly List<GrpcChannel> _channels = [];

    public TestPki Pki { get; } = new();

    /// <summary>Another CA the daemon does not trust.</summary>
    public TestPki OtherPki { get; } = new("Some Other CA");

    public RunningDaemon Daemon { get; private set; } = null!;

    public string SocketPath => _dir.File("merlin.sock");

    public (string Cert, string Key) ServerPem { get; private set; }

    public MerlinClient Admin => Client(Pki.Client("operator", "admin"));

    public async ValueTask InitializeAsync()
    {
        ServerPem = Pki.WritePem(Pki.Server(), "server");
        var tokens = Pki.Write("tokens", $"""
            # token role [ip]
            {AdminToken} admin
            {OwnToken} realserver {OwnIp}
            {OtherToken} realserver {OtherIp}   # another node's agent
            """);
        Daemon = await RunningDaemon.StartAsync(o => o with
        {
            StoreBackend = "sqlite",
            StorePath = _dir.File("merlin.db"),
            TlsCert = ServerPem.Cert,
            TlsKey = ServerPem.Key,
            TlsClientCa = Pki.CaFile,
            TokensFile = tokens,
            UnixSocket = SocketPath,
        });
        var admin = Admin;
        await admin.CreateServiceAsync(new VirtualService
        {
            Id = "web",
            Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp },
            Config = new() { Scheduler = "rr" },
        });
        foreach (var ip in new[] { OwnIp, OtherIp })
            await admin.CreateServerAsync(Server("web", ip, 80, weight: 1));
    }

    public static RealServer Server(string service, IPAddress ip, uint port, uint? weight = null) => new()
    {
        ServiceID = service,
        Key = new() { Ip = ip.ToString(), Port = port },
        Config = weight is null ? null : new() { Weight = weight, Forward = ForwardMethod.Route },
    };

    /// <summary>A TLS client trusting <paramref name="trust"/> (default: the daemon's CA), showing a certificate and/or a token.</summary>
    public MerlinClient Client(X509Certificate2? certificate = null, string? token = null, X509Certificate2? trust = null)
    {
        var ssl = new SslClientAuthenticationOptions
        {
            CertificateChainPolicy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck },
        };
        ssl.CertificateChainPolicy.CustomTrustStore.Add(trust ?? Pki.Ca);
        if (certificate is not null) ssl.ClientCertificates = [certificate];
        var channel = GrpcChannel.ForAddress($"https://127.0.0.1:{Daemon.Options.Port}",
            new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler { SslOptions = ssl } });
        _channels.Add(channel);
        var invoker = token is null ? channel.CreateCallInvoker()
            : channel.Intercept(headers => { headers.Add("authorization", $"Bearer {token}"); return headers; });
        return new MerlinClient(invoker);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var channel in _channels) channel.Dispose();
        await Daemon.DisposeAsync();
        Pki.Dispose();
        OtherPki.Dispose();
        _dir.Dispose();
    }
}
