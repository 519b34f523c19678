using System.Net;
using Merlin.Api.Security;
using Merlin.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Merlin.Daemon.Tests;

/// <summary>The security flags at start-up: what is refused, with which words, and what the log says.</summary>
public sealed class ApiSecurityOptionsTests : IDisposable
{
    private readonly TestPki _pki = new();

    private static DaemonOptions Parse(params string[] args) =>
        DaemonOptions.From(DaemonOptions.BuildConfiguration(args, new Dictionary<string, string?>()));

    [Theory]
    [InlineData(new[] { "--listen-address", "0.0.0.0" }, "--listen-address: 0.0.0.0 is beyond loopback and the API has no TLS; give --tls-cert and --tls-key")]
    [InlineData(new[] { "--listen-address", "198.18.0.1" }, "or --allow-insecure to serve it in the clear")]
    [InlineData(new[] { "--listen-address", "::", "--tokens-file", "/etc/merlin/tokens" }, "--listen-address: :: is beyond loopback and the API has no TLS")]
    [InlineData(new[] { "--listen-address", "0.0.0.0", "--tls-cert", "a.crt", "--tls-key", "a.key" }, "asks for no credentials, so every caller would be admin")]
    [InlineData(new[] { "--tls-cert", "a.crt" }, "--tls-key: required with --tls-cert")]
    [InlineData(new[] { "--tls-key", "a.key" }, "--tls-cert: required with --tls-key")]
    [InlineData(new[] { "--tls-client-ca", "ca.crt" }, "--tls-client-ca: client certificates need TLS")]
    public void From_InsecureOrIncompleteSecurity_IsRefusedNamingTheFlag(string[] args, string expected)
    {
        var e = Assert.Throws<OptionsException>(() => Parse(args));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void From_Defaults_AreLoopbackWithoutTlsOrCredentials()
    {
        var o = Parse();
        Assert.Equal(IPAddress.Loopback, o.ListenAddress);
        Assert.Equal((null, null, null, null, null, false), (o.TlsCert, o.TlsKey, o.TlsClientCa, o.TokensFile, o.UnixSocket, o.AllowInsecure));
    }

    [Theory]
    [InlineData("--listen-address", "0.0.0.0", "--allow-insecure")]
    [InlineData("--listen-address", "0.0.0.0", "--allow-insecure", "true")]
    [InlineData("--listen-address", "198.18.0.1", "--tls-cert", "a.crt", "--tls-key", "a.key", "--tls-client-ca", "ca.crt")]
    [InlineData("--listen-address", "198.18.0.1", "--tls-cert", "a.crt", "--tls-key", "a.key", "--tokens-file", "tokens")]
    [InlineData("--listen-address", "::1", "--tokens-file", "tokens")]
    public void From_SecureOrExplicitlyInsecure_IsAccepted(params string[] args) => Parse(args);

    [Fact]
    public void From_AllowInsecure_ComesFromTheEnvironmentToo()
    {
        var env = new Dictionary<string, string?> { ["MERLIN_ALLOW_INSECURE"] = "true", ["MERLIN_UNIX_SOCKET"] = "/run/merlin/merlin.sock" };
        var o = DaemonOptions.From(DaemonOptions.BuildConfiguration(["--listen-address", "0.0.0.0"], env));
        Assert.True(o.AllowInsecure);
        Assert.Equal("/run/merlin/merlin.sock", o.UnixSocket);
    }

    [Fact]
    public void Load_MissingOrUnusableFiles_NameTheFlag()
    {
        var (cert, key) = _pki.WritePem(_pki.Server(), "server");
        var (_, otherKey) = _pki.WritePem(_pki.Server(), "other");
        var garbage = _pki.Write("garbage.pem", "not a certificate");
        var tls = new DaemonOptions { TlsCert = cert, TlsKey = key };

        Assert.Contains("--tls-cert: /nonexistent.crt does not exist", Load(tls with { TlsCert = "/nonexistent.crt" }));
        Assert.Contains($"--tls-cert: cannot use {garbage}", Load(tls with { TlsCert = garbage }));
        Assert.Contains($"--tls-cert: cannot use {cert}", Load(tls with { TlsKey = otherKey }));
        Assert.Contains($"--tls-client-ca: {garbage} holds no PEM certificate", Load(tls with { TlsClientCa = garbage }));
        Assert.Contains("--tokens-file: /nonexistent/tokens does not exist", Load(new DaemonOptions { TokensFile = "/nonexistent/tokens" }));
    }

    [Theory]
    [InlineData("short admin", "line 1: the token is shorter than 16 characters")]
    [InlineData("# comment\n\n0123456789abcdef0123 root", "line 3: \"root\" is not a role (admin or realserver)")]
    [InlineData("0123456789abcdef0123 realserver", "line 1: a realserver token needs the IP it may manage")]
    [InlineData("0123456789abcdef0123 admin 198.18.1.1", "line 1: an admin token takes no IP")]
    [InlineData("0123456789abcdef0123 realserver 198.18.1.300", "line 1: \"198.18.1.300\" is not an IP address")]
    [InlineData("0123456789abcdef0123", "line 1: expected \"token role [ip…]\"")]
    [InlineData("0123456789abcdef0123 admin\n0123456789abcdef0123 realserver 198.18.1.1", "line 2: the same token as an earlier line")]
    public void Load_BadTokensFile_NamesTheLineAndWhy_NeverTheToken(string text, string expected)
    {
        var file = _pki.Write("tokens", text);
        var message = Load(new DaemonOptions { TokensFile = file });
        Assert.Contains($"--tokens-file: {file} {expected}", message);
        Assert.DoesNotContain("0123456789abcdef0123", message);
    }

    [Fact]
    public void Tokens_ParseRolesAddressesAndComments()
    {
        var tokens = BearerTokens.Parse("""
            # agents
            realserver-21-token-0123 realserver 198.18.1.21 2001:db8::21   # dual-stack
            admin-token-0123456789ab admin
            """);
        Assert.Equal(2, tokens.Count);
        var agent = tokens.Find("realserver-21-token-0123")!;
        Assert.Equal(Role.RealServer, agent.Role);
        Assert.Equal([IPAddress.Parse("198.18.1.21"), IPAddress.Parse("2001:db8::21")], agent.Addresses);
        Assert.Equal("bearer token on line 2 of the tokens file", agent.Credential);
        Assert.Equal(Role.Admin, tokens.Find("admin-token-0123456789ab")!.Role);
        Assert.Null(tokens.Find("admin-token-0123456789a"));
    }

    [Fact]
    public void OnStarted_AllowInsecureBeyondLoopback_WarnsThatTheApiIsInTheClearAndOpen()
    {
        var options = Parse("--listen-address", "0.0.0.0", "--allow-insecure");
        var log = StartedLog(options);
        Assert.Contains(log, l => l.Level == LogLevel.Warning && l.Message.Contains("--allow-insecure: the API on 0.0.0.0:4282 is served without TLS"));
        Assert.Contains(log, l => l.Level == LogLevel.Warning && l.Message.Contains("asks for no credentials; anyone who reaches it is admin"));
    }

    [Fact]
    public void OnStarted_Loopback_SaysHowTheApiIsSecured_WithoutWarnings()
    {
        var (cert, key) = _pki.WritePem(_pki.Server(), "server");
        var log = StartedLog(new DaemonOptions { TlsCert = cert, TlsKey = key, TlsClientCa = _pki.CaFile });
        var line = Assert.Single(log);
        Assert.Equal(LogLevel.Information, line.Level);
        Assert.Contains("API 127.0.0.1:4282: TLS with CN=merlin; accepts client certificates from CN=Merlin Test CA; Unix socket none", line.Message);
    }

    private static List<(LogLevel Level, string Message)> StartedLog(DaemonOptions options)
    {
        var lines = new List<(LogLevel, string)>();
        using var services = new ServiceCollection().AddLogging(b => b.AddProvider(new ListLogger(lines))).BuildServiceProvider();
        ApiSecurity.Load(options, TimeProvider.System).OnStarted(services);
        return lines;
    }

    private static string Load(DaemonOptions options) =>
        Assert.Throws<OptionsException>(() => ApiSecurity.Load(options, TimeProvider.System)).Message;

    public void Dispose() => _pki.Dispose();

    private sealed class ListLogger(List<(LogLevel, string)> lines) : ILoggerProvider, ILogger
    {
        public ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (lines) lines.Add((logLevel, formatter(state, exception)));
        }
        public void Dispose() { }
    }
}
