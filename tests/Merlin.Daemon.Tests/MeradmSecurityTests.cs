using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Cli;
using Merlin.Testing;
using static Merlin.Daemon.Tests.SecuredDaemon;

namespace Merlin.Daemon.Tests;

/// <summary>meradm against a daemon that requires credentials: over TLS with --ca/--cert/--key, with a token, and over the Unix socket.</summary>
public sealed class MeradmSecurityTests(SecuredDaemon secured) : IClassFixture<SecuredDaemon>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Tcp => $"127.0.0.1:{secured.Daemon.Options.Port}";

    private static async Task<(int Code, string Out, string Err)> Meradm(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = await MeradmApp.RunAsync(args, stdout, stderr, ct: Ct);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private string[] AsAdmin()
    {
        var (cert, key) = secured.Pki.WritePem(secured.Pki.Client("operator", "admin"), "operator");
        return ["-H", Tcp, "--ca", secured.Pki.CaFile, "--cert", cert, "--key", key];
    }

    [Fact]
    public async Task OverTls_WithCaCertAndKey_AdminManagesServices()
    {
        var admin = AsAdmin();
        Assert.Equal((0, ""), Pick(await Meradm([.. admin, "service", "add", "tls-web", "tcp", "198.18.0.30:443", "-s", "mh"])));
        Assert.Equal((0, ""), Pick(await Meradm([.. admin, "server", "add", "tls-web", "198.18.1.30:443", "-w", "2", "-f", "route"])));
        var (code, table, _) = await Meradm([.. admin, "list"]);
        Assert.Equal(0, code);
        Assert.Contains("198.18.1.30:443", table);
        Assert.Equal((0, ""), Pick(await Meradm([.. admin, "service", "del", "tls-web"])));
    }

    [Fact]
    public async Task OverTls_KeyInTheCertificateFile_Works()
    {
        var (cert, key) = secured.Pki.WritePem(secured.Pki.Client("operator", "admin"), "combined");
        var combined = secured.Pki.Write("combined.pem", File.ReadAllText(cert) + "\n" + File.ReadAllText(key));
        var (code, _, err) = await Meradm("-H", Tcp, "--ca", secured.Pki.CaFile, "--cert", combined, "status");
        Assert.True(code == 0, err);
    }

    [Fact]
    public async Task OverTls_WithoutClientCertificate_SaysWhyItIsRefused()
    {
        var (code, _, err) = await Meradm("-H", Tcp, "--ca", secured.Pki.CaFile, "list");
        Assert.Equal(1, code);
        Assert.Equal("meradm: list services: no credentials: this API requires a client certificate or a bearer token\n", err.ReplaceLineEndings("\n"));
    }

    [Fact]
    public async Task OverTls_TrustingAnotherCa_RefusesTheDaemon_AndSaysSo()
    {
        var (cert, key) = secured.Pki.WritePem(secured.Pki.Client("operator", "admin"), "operator2");
        var (code, _, err) = await Meradm("-H", Tcp, "--ca", secured.OtherPki.CaFile, "--cert", cert, "--key", key, "list");
        Assert.Equal(1, code);
        Assert.True(err.StartsWith($"meradm: list services: cannot reach merlin at {Tcp}: TLS failed: ", StringComparison.Ordinal), err);
        Assert.True(err.Contains("errors in the certificate chain", StringComparison.Ordinal), err);
        Assert.Contains("(was the daemon's certificate issued by the --ca CA, for the name or address in --host?)", err);
    }

    [Fact]
    public async Task PlainHttp2_ToATlsDaemon_Fails()
    {
        var (code, _, err) = await Meradm("-H", Tcp, "list");
        Assert.Equal(1, code);
        Assert.StartsWith($"meradm: list services: cannot reach merlin at {Tcp}: ", err);
        Assert.EndsWith("(if the daemon serves TLS, give --ca, or --host https://…)", err.TrimEnd());
    }

    [Fact]
    public async Task RealServerCertificate_AddsItsOwnServer_NotAnothers()
    {
        var (cert, key) = secured.Pki.WritePem(secured.Pki.Client("agent-21", "realserver", OwnIp), "agent-21");
        string[] agent = ["-H", Tcp, "--ca", secured.Pki.CaFile, "--cert", cert, "--key", key];

        Assert.Equal((0, ""), Pick(await Meradm([.. agent, "server", "add", "web", "198.18.1.21:9000", "-w", "1", "-f", "route"])));
        Assert.Equal((0, ""), Pick(await Meradm([.. agent, "server", "edit", "web", "198.18.1.21:9000", "-w", "0"])));
        var (code, _, err) = await Meradm([.. agent, "server", "del", "web", "198.18.1.99:80"]);
        Assert.Equal(1, code);
        Assert.Contains("may DeleteServer only servers with its own IP (198.18.1.21), not 198.18.1.99", err);
        Assert.Equal((0, ""), Pick(await Meradm([.. agent, "server", "del", "web", "198.18.1.21:9000"])));
    }

    [Fact]
    public async Task TokenFile_OverTls_IdentifiesTheCaller()
    {
        var token = secured.Pki.Write("agent-token", OwnToken + "\n");
        string[] agent = ["-H", Tcp, "--ca", secured.Pki.CaFile, "--token-file", token];
        Assert.Equal((0, ""), Pick(await Meradm([.. agent, "server", "add", "web", "198.18.1.21:9001", "-w", "1", "-f", "route"])));
        var (code, _, err) = await Meradm([.. agent, "service", "del", "web"]);
        Assert.Equal(1, code);
        Assert.Contains("realserver 198.18.1.21 (bearer token on line 3 of the tokens file) may not call DeleteService: only admin may", err);
        Assert.Equal((0, ""), Pick(await Meradm([.. agent, "server", "del", "web", "198.18.1.21:9001"])));
    }

    [Fact]
    public async Task UnixSocket_CallersAreAdmin_BothSpellings()
    {
        Assert.Equal((0, ""), Pick(await Meradm("--unix-socket", secured.SocketPath, "service", "add", "local", "udp", "198.18.0.40:53", "-s", "rr")));
        var (code, table, err) = await Meradm("-H", $"unix://{secured.SocketPath}", "list");
        Assert.True(code == 0, err);
        Assert.Contains("198.18.0.40:53", table);
        Assert.Equal((0, ""), Pick(await Meradm("-H", $"unix://{secured.SocketPath}", "service", "del", "local")));
    }

    [Fact, System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void UnixSocket_IsOwnerAndGroupReadWriteOnly()
    {
        Assert.Equal(ApiSecurity.SocketMode, File.GetUnixFileMode(secured.SocketPath));
    }

    [Fact]
    public async Task UnixSocket_DoesNotServeHealthEndpoints()
    {
        using var http = new HttpClient(new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                await socket.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(secured.SocketPath), ct);
                return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
            },
        }) { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        var response = await http.GetAsync("http://localhost/status", Ct);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
    }

    private static (int Code, string Err) Pick((int Code, string Out, string Err) run) => (run.Code, run.Err);
}

/// <summary>Credentials on a plain loopback daemon, the Unix socket across restarts, and the old clients.</summary>
public sealed class LoopbackSecurityTests : IDisposable
{
    private readonly TempDir _dir = new("loopback-security");
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task<RunningDaemon> Start(Func<DaemonOptions, DaemonOptions>? more = null) =>
        RunningDaemon.StartAsync(o => (more ?? (x => x))(o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") }));

    [Fact]
    public async Task TokensFile_OnPlainLoopback_RequiresAToken_AndMeradmSendsIt()
    {
        var tokens = _dir.File("tokens");
        File.WriteAllText(tokens, $"{AdminToken} admin\n");
        await using var daemon = await Start(o => o with { TokensFile = tokens });

        var refused = await Assert.ThrowsAsync<RpcException>(() => daemon.Original.ListAsync(new Empty(), cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.Contains("requires a bearer token", refused.Status.Detail);

        var tokenFile = _dir.File("admin-token");
        File.WriteAllText(tokenFile, AdminToken);
        var stderr = new StringWriter();
        var code = await MeradmApp.RunAsync(["-H", $"127.0.0.1:{daemon.Options.Port}", "--token-file", tokenFile, "status"], new StringWriter(), stderr, ct: Ct);
        Assert.True(code == 0, stderr.ToString());
    }

    [Fact]
    public async Task OriginalClient_OnPlainLoopback_StillWorks_WithAUnixSocketBeside()
    {
        await using var daemon = await Start(o => o with { UnixSocket = _dir.File("merlin.sock") });
        await daemon.Original.CreateServiceAsync(new Original.Types.VirtualService
        {
            Id = "old", Key = new() { Ip = "198.18.0.50", Port = 80, Protocol = Original.Types.Protocol.Tcp }, Config = new() { Scheduler = "rr" },
        }, cancellationToken: Ct);
        Assert.Equal("old", Assert.Single((await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct)).Items).Service.Id);
    }

    [Fact]
    public async Task UnixSocket_SurvivesRestart_AndAStaleSocketFile()
    {
        var path = _dir.File("merlin.sock");
        await using var daemon = await Start(o => o with { UnixSocket = path });
        await daemon.RestartAsync();
        Assert.Equal(0, await MeradmApp.RunAsync(["--unix-socket", path, "status"], new StringWriter(), new StringWriter(), ct: Ct));

        // A daemon that dies leaves its socket file behind, which refuses connections; the next one replaces it.
        await daemon.StopAsync();
        if (File.Exists(path)) File.Delete(path);
        using var stale = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        stale.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        Assert.True(File.Exists(path));
        await daemon.StartAsync();
        Assert.Equal(0, await MeradmApp.RunAsync(["--unix-socket", path, "status"], new StringWriter(), new StringWriter(), ct: Ct));
    }

    [Fact]
    public async Task UnixSocket_InUseByAnotherDaemon_IsAStartError()
    {
        var path = _dir.File("merlin.sock");
        await using var first = await Start(o => o with { UnixSocket = path });
        var e = await Assert.ThrowsAsync<OptionsException>(() => Start(o => o with { UnixSocket = path, StorePath = _dir.File("second.db") }));
        Assert.Contains($"--unix-socket: {path} is in use by another process", e.Message);
    }

    public void Dispose() => _dir.Dispose();
}
