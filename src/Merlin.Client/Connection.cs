using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;

namespace Merlin.Client;

/// <summary>Where and how meradm talks to the daemon, resolved from the global options.</summary>
/// <param name="Host">Host name or address, without brackets.</param>
/// <param name="Port">The API port.</param>
/// <param name="Timeout">Deadline for each call.</param>
public sealed record ConnectionOptions(string Host, ushort Port, TimeSpan Timeout)
{
    public const string DefaultHost = "127.0.0.1";
    public const ushort DefaultPort = 4282;
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The daemon's local Unix socket (<c>--unix-socket</c>); Host and Port are then unused.</summary>
    public string? UnixSocket { get; init; }

    /// <summary>TLS to the daemon, with the CA to trust and the client certificate to show; null is plain HTTP/2.</summary>
    public ClientTls? Tls { get; init; }

    /// <summary>A file holding a bearer token to send (<c>--token-file</c>).</summary>
    public string? TokenFile { get; init; }

    /// <summary>The address a person would type back: <c>127.0.0.1:4282</c>, <c>[::1]:4282</c>, <c>unix:///run/merlin/merlin.sock</c>.</summary>
    public string Authority =>
        UnixSocket is not null ? $"unix://{UnixSocket}"
        : IPAddress.TryParse(Host, out var ip) && ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{Host}]:{Port}"
        : $"{Host}:{Port}";

    // Over a Unix socket the URL only names the HTTP/2 authority the daemon sees.
    public Uri Address => UnixSocket is not null ? new("http://localhost") : new($"{(Tls is null ? "http" : "https")}://{Authority}");
}

/// <summary>TLS settings: <c>--ca</c> (trust only this CA for the daemon's certificate; default: the system's),
/// <c>--cert</c> and <c>--key</c> (the client certificate; the key may be in the certificate's file).</summary>
public sealed record ClientTls(string? CaFile, string? CertFile, string? KeyFile);

/// <summary>A certificate, key or token file that cannot be used; the message starts with its option.</summary>
public sealed class ConnectionSetupException(string message) : Exception(message);

/// <summary>The one place channels are made: plain HTTP/2 (h2c), TLS with optional client certificates, or the daemon's Unix socket.</summary>
public static class GrpcConnection
{
    public static GrpcChannel CreateChannel(ConnectionOptions options)
    {
        // A refused or silent address fails within --timeout, not the OS connect timeout.
        var handler = new SocketsHttpHandler { ConnectTimeout = options.Timeout };
        if (options.UnixSocket is { } path) handler.ConnectCallback = (_, ct) => ConnectUnixAsync(path, ct);
        if (options.Tls is { } tls) handler.SslOptions = ClientAuthentication(tls);
        return GrpcChannel.ForAddress(options.Address, new GrpcChannelOptions
        {
            HttpHandler = handler,
            // List returns everything in one message: 10,000 services × 10 servers is ~10 MB, past
            // gRPC's 4 MB default.
            MaxReceiveMessageSize = MaxMessageBytes,
        });
    }

    public const int MaxMessageBytes = 512 * 1024 * 1024;

    /// <summary>The metadata every call carries: <c>authorization: Bearer …</c> with <c>--token-file</c>.</summary>
    public static Metadata? Headers(ConnectionOptions options)
    {
        if (options.TokenFile is not { } file) return null;
        var token = Load("--token-file", file, () => File.ReadAllText(file)).Trim();
        if (token.Length == 0 || token.Any(char.IsWhiteSpace)) throw new ConnectionSetupException($"--token-file: {file} must hold one token and nothing else");
        return new Metadata { { "authorization", $"Bearer {token}" } };
    }

    private static SslClientAuthenticationOptions ClientAuthentication(ClientTls tls)
    {
        var ssl = new SslClientAuthenticationOptions();
        if (tls.CaFile is { } caFile)
        {
            var roots = Load("--ca", caFile, () => { var all = new X509Certificate2Collection(); all.ImportFromPemFile(caFile); return all; });
            if (roots.Count == 0) throw new ConnectionSetupException($"--ca: {caFile} holds no PEM certificate");
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.AddRange(roots);
            ssl.CertificateChainPolicy = policy;
        }
        if (tls.CertFile is { } certFile)
            ssl.ClientCertificates = [Load("--cert", certFile, () => X509Certificate2.CreateFromPemFile(certFile, tls.KeyFile))];
        return ssl;
    }

    private static async ValueTask<Stream> ConnectUnixAsync(string path, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static T Load<T>(string option, string path, Func<T> load)
    {
        try
        {
            return load();
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new ConnectionSetupException($"{option}: cannot use {path}: {e.Message}");
        }
    }
}
