using System.Net;
using System.Net.Sockets;
using Grpc.Net.Client;

namespace Merlin.Cli;

/// <summary>Where and how meradm talks to the daemon, resolved from the global options.</summary>
/// <param name="Host">Host name or address, without brackets.</param>
/// <param name="Port">The API port.</param>
/// <param name="Timeout">Deadline for each call.</param>
public sealed record ConnectionOptions(string Host, ushort Port, TimeSpan Timeout)
{
    public const string DefaultHost = "127.0.0.1";
    public const ushort DefaultPort = 4282;
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The address a person would type back: <c>127.0.0.1:4282</c>, <c>[::1]:4282</c>.</summary>
    public string Authority =>
        IPAddress.TryParse(Host, out var ip) && ip.AddressFamily == AddressFamily.InterNetworkV6
            ? $"[{Host}]:{Port}"
            : $"{Host}:{Port}";

    public Uri Address => new($"http://{Authority}");
}

/// <summary>
/// The one place channels are made. Plain HTTP/2 (h2c) today; TLS and client certificates
/// (<c>--ca</c>, <c>--cert</c>, <c>--key</c>) belong here when the daemon serves them.
/// </summary>
public static class GrpcConnection
{
    public static GrpcChannel CreateChannel(ConnectionOptions options) =>
        GrpcChannel.ForAddress(options.Address, new GrpcChannelOptions
        {
            // A refused or silent address fails within --timeout, not the OS connect timeout.
            HttpHandler = new SocketsHttpHandler { ConnectTimeout = options.Timeout },
            // List returns everything in one message: 10,000 services × 10 servers is ~10 MB, past
            // gRPC's 4 MB default.
            MaxReceiveMessageSize = MaxMessageBytes,
        });

    public const int MaxMessageBytes = 512 * 1024 * 1024;
}
