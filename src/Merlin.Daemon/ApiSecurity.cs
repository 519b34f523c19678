using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Merlin.Api.Security;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;

namespace Merlin.Daemon;

/// <summary>
/// The API's listeners and credentials from the daemon's flags: the TCP listener (TLS with
/// <c>--tls-cert</c>/<c>--tls-key</c>, client certificates with <c>--tls-client-ca</c>), bearer tokens
/// (<c>--tokens-file</c>) and the local Unix socket (<c>--unix-socket</c>). Who may do what is decided
/// in Merlin.Api (<see cref="CallerAuthenticator"/>, <see cref="AccessPolicy"/>); this class only loads
/// files and wires Kestrel.
/// </summary>
internal sealed partial class ApiSecurity
{
    /// <summary>The Unix socket's mode: owner and group may connect (connecting needs write permission).</summary>
    public const UnixFileMode SocketMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;

    private readonly DaemonOptions _options;
    private readonly X509Certificate2? _serverCertificate;
    private readonly X509Certificate2Collection _serverChain = [];

    private ApiSecurity(DaemonOptions options, ApiCredentials credentials, X509Certificate2? serverCertificate)
    {
        _options = options;
        Credentials = credentials;
        _serverCertificate = serverCertificate;
    }

    public ApiCredentials Credentials { get; }

    /// <summary>Reads the certificate, CA and tokens files; a bad one stops the daemon with its flag named.</summary>
    public static ApiSecurity Load(DaemonOptions options, TimeProvider time)
    {
        X509Certificate2? certificate = null;
        var chain = new X509Certificate2Collection();
        if (options.TlsCert is { } certFile)
        {
            certificate = Read("--tls-cert", certFile, () => X509Certificate2.CreateFromPemFile(certFile, options.TlsKey));
            // Intermediates after the leaf in the same file are sent with it.
            chain = Read("--tls-cert", certFile, () => { var all = new X509Certificate2Collection(); all.ImportFromPemFile(certFile); return all; });
            if (!certificate.HasPrivateKey) throw new OptionsException($"--tls-key: {options.TlsKey} holds no private key for {certFile}");
        }
        ClientCertificateAuthority? authority = null;
        if (options.TlsClientCa is { } caFile)
        {
            var cas = Read("--tls-client-ca", caFile, () => { var all = new X509Certificate2Collection(); all.ImportFromPemFile(caFile); return all; });
            if (cas.Count == 0) throw new OptionsException($"--tls-client-ca: {caFile} holds no PEM certificate");
            authority = Read("--tls-client-ca", caFile, () => new ClientCertificateAuthority(cas, time));
        }
        BearerTokens? tokens = null;
        if (options.TokensFile is { } tokensFile)
        {
            var text = Read("--tokens-file", tokensFile, () => File.ReadAllText(tokensFile));
            try { tokens = BearerTokens.Parse(text); }
            catch (FormatException e) { throw new OptionsException($"--tokens-file: {tokensFile} {e.Message}"); }
        }
        var security = new ApiSecurity(options, new ApiCredentials { ClientCertificates = authority, Tokens = tokens }, certificate);
        foreach (var extra in chain.Skip(1)) security._serverChain.Add(extra);
        return security;
    }

    /// <summary>Adds the API listeners and the interceptor that admits each call.</summary>
    public void AddTo(WebApplicationBuilder builder)
    {
        if (_options.UnixSocket is { } socket) PrepareSocketPath(socket);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(_options.ListenAddress, _options.Port, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                if (_serverCertificate is not null) listen.UseHttps(Https());
            });
            if (_options.UnixSocket is { } path) k.ListenUnixSocket(path, listen => listen.Protocols = HttpProtocols.Http2);
        });
        builder.Services.AddSingleton(Credentials);
        builder.Services.AddSingleton<CallerAuthenticator>();
        builder.Services.AddGrpc(o => o.Interceptors.Add<AuthorizationInterceptor>());
    }

    /// <summary>Once listening: the socket's mode, and one log line saying how the API is secured.</summary>
    public void OnStarted(IServiceProvider services)
    {
        var log = services.GetRequiredService<ILoggerFactory>().CreateLogger("Merlin.Daemon.ApiSecurity");
        if (_options.UnixSocket is { } socket && !OperatingSystem.IsWindows()) File.SetUnixFileMode(socket, SocketMode);
        LogSecured(log, _options.ListenAddress.ToString(), _options.Port, Transport(), Accepts(), _options.UnixSocket ?? "none");
        if (_serverCertificate is { } cert && cert.NotAfter.ToUniversalTime() < DateTime.UtcNow.AddDays(14))
            LogCertificateExpiring(log, _options.TlsCert!, cert.NotAfter.ToUniversalTime());
        if (_options.AllowInsecure && !IPAddress.IsLoopback(_options.ListenAddress))
        {
            if (_serverCertificate is null) LogInsecureClear(log, _options.ListenAddress.ToString(), _options.Port);
            if (!Credentials.Required) LogInsecureOpen(log, _options.ListenAddress.ToString(), _options.Port);
        }
    }

    private HttpsConnectionAdapterOptions Https() => new()
    {
        ServerCertificate = _serverCertificate,
        ServerCertificateChain = _serverChain,
        SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        CheckCertificateRevocation = false,
        ClientCertificateMode = Credentials.ClientCertificates is null ? ClientCertificateMode.NoCertificate : ClientCertificateMode.AllowCertificate,
        // Every call checks the certificate against --tls-client-ca and refuses it as Unauthenticated with
        // the reason (expired, another CA); a refused handshake would only tell the client "connection reset".
        ClientCertificateValidation = (_, _, _) => true,
    };

    private string Transport() => _serverCertificate is null ? "plain HTTP/2 (no TLS)" : $"TLS with {_serverCertificate.Subject}";

    private string Accepts() => (Credentials.ClientCertificates, Credentials.Tokens) switch
    {
        (null, null) => "no credentials (every TCP caller is admin)",
        ({ } ca, null) => $"client certificates from {string.Join("; ", ca.Subjects)}",
        (null, { } t) => $"{t.Count} bearer tokens",
        ({ } ca, { } t) => $"client certificates from {string.Join("; ", ca.Subjects)} and {t.Count} bearer tokens",
    };

    /// <summary>
    /// The socket's directory exists (made 0750 if it did not), and a socket left by a daemon that died is
    /// removed; a socket some live process answers on is left alone, and binding then fails.
    /// </summary>
    private static void PrepareSocketPath(string path)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(dir) && !OperatingSystem.IsWindows())
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute);
        if (!File.Exists(path)) return;
        if ((File.GetAttributes(path) & FileAttributes.Directory) != 0) throw new OptionsException($"--unix-socket: {path} is a directory");
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException)
        {
            File.Delete(path);
            return;
        }
        throw new OptionsException($"--unix-socket: {path} is in use by another process (is another merlin running?)");
    }

    private static T Read<T>(string flag, string path, Func<T> read)
    {
        if (!File.Exists(path)) throw new OptionsException($"{flag}: {path} does not exist");
        try
        {
            return read();
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new OptionsException($"{flag}: cannot use {path}: {e.Message}");
        }
    }

    [LoggerMessage(EventId = 221, Level = LogLevel.Information, Message = "API {Address}:{Port}: {Transport}; accepts {Credentials}; Unix socket {Socket} (admin)")]
    private static partial void LogSecured(ILogger log, string address, int port, string transport, string credentials, string socket);

    [LoggerMessage(EventId = 222, Level = LogLevel.Warning, Message = "--allow-insecure: the API on {Address}:{Port} is served without TLS; requests and tokens cross the network in the clear")]
    private static partial void LogInsecureClear(ILogger log, string address, int port);

    [LoggerMessage(EventId = 223, Level = LogLevel.Warning, Message = "--allow-insecure: the API on {Address}:{Port} asks for no credentials; anyone who reaches it is admin")]
    private static partial void LogInsecureOpen(ILogger log, string address, int port);

    [LoggerMessage(EventId = 224, Level = LogLevel.Warning, Message = "The API's certificate {File} expires on {NotAfter:u}; replace it and restart the daemon")]
    private static partial void LogCertificateExpiring(ILogger log, string file, DateTime notAfter);
}
