using Merlin.Client;

namespace Merlin.Cli.Tests;

/// <summary>How meradm is told to use TLS, client certificates, a token or the daemon's Unix socket, and the mistakes it refuses.</summary>
public sealed class SecureConnectionTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("meradm-tls-").FullName;

    private string File(string name, string text = "")
    {
        var path = Path.Combine(_dir, name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public async Task CaCertKey_UseTls_ToTheSameHostAndPort()
    {
        var (ca, cert, key) = (File("ca.crt"), File("me.crt"), File("me.key"));
        var run = await Meradm.RunAsync("-H", "lb1:4300", "--ca", ca, "--cert", cert, "--key", key, "list");

        var connection = Assert.Single(run.Connections);
        Assert.Equal(new ClientTls(ca, cert, key), connection.Tls);
        Assert.Equal(new Uri("https://lb1:4300"), connection.Address);
        Assert.Null(connection.UnixSocket);
    }

    [Fact]
    public async Task CaAlone_IsServerAuthenticatedTls()
    {
        var ca = File("ca.crt");
        var run = await Meradm.RunAsync("--ca", ca, "list");

        Assert.Equal(new ClientTls(ca, null, null), Assert.Single(run.Connections).Tls);
        Assert.Equal(new Uri("https://127.0.0.1:4282"), run.Connections[0].Address);
    }

    [Theory]
    [InlineData("https://lb1.example.net:4300", "https://lb1.example.net:4300/", true)]
    [InlineData("https://[2001:db8::5]/", "https://[2001:db8::5]:4282/", true)]
    [InlineData("http://127.0.0.1:4300", "http://127.0.0.1:4300/", false)]
    public async Task Host_AsUrl_ChoosesTlsByScheme(string host, string address, bool tls)
    {
        var run = await Meradm.RunAsync("-H", host, "list");

        var connection = Assert.Single(run.Connections);
        Assert.Equal(address, connection.Address.ToString());
        Assert.Equal(tls, connection.Tls is not null);
    }

    [Theory]
    [InlineData("--unix-socket", "/run/merlin/merlin.sock")]
    [InlineData("-H", "unix:///run/merlin/merlin.sock")]
    [InlineData("--host", "unix:///run/merlin/merlin.sock")]
    public async Task UnixSocket_BothSpellings(string option, string value)
    {
        var run = await Meradm.RunAsync(option, value, "--timeout", "2s", "list");

        var connection = Assert.Single(run.Connections);
        Assert.Equal("/run/merlin/merlin.sock", connection.UnixSocket);
        Assert.Equal("unix:///run/merlin/merlin.sock", connection.Authority);
        Assert.Equal(new Uri("http://localhost"), connection.Address);
        Assert.Equal(TimeSpan.FromSeconds(2), connection.Timeout);
        Assert.Null(connection.Tls);
    }

    [Fact]
    public async Task TokenFile_SendsTheTokenAsBearerMetadata_OnEveryCall()
    {
        var token = File("token", "s3cret-token-0123456789\n");
        var run = await Meradm.RunAsync("--token-file", token, "server", "del", "web", "198.18.1.21:80");

        Assert.Equal(0, run.ExitCode);
        var headers = Assert.Single(run.Client.Calls).Options.Headers;
        Assert.NotNull(headers);
        Assert.Equal("Bearer s3cret-token-0123456789", headers.GetValue("authorization"));
    }

    [Fact]
    public async Task WithoutTokenFile_NoAuthorizationIsSent()
    {
        var run = await Meradm.RunAsync("status");

        Assert.Null(Assert.Single(run.Client.Calls).Options.Headers?.GetValue("authorization"));
    }

    [Fact]
    public async Task TokenFile_Empty_IsUsageError()
    {
        var run = await Meradm.RunAsync("--token-file", File("empty-token", "\n"), "list");

        run.AssertUsageError("must hold one token and nothing else");
    }

    [Fact]
    public async Task BadCaFile_IsUsageError_BeforeAnyCall()
    {
        var garbage = File("garbage.pem", "not a certificate");
        var stderr = new StringWriter();
        var code = await MeradmApp.RunAsync(["--ca", garbage, "--timeout", "1s", "list"], new StringWriter(), stderr, ct: TestContext.Current.CancellationToken);

        Assert.Equal(2, code);
        Assert.Contains($"meradm: --ca: {garbage} holds no PEM certificate", stderr.ToString());
    }

    [Theory]
    [InlineData("give --host or --unix-socket, not both", "--unix-socket", "/run/merlin/merlin.sock", "-H", "lb1")]
    [InlineData("--port does not apply to a Unix socket", "--unix-socket", "/run/merlin/merlin.sock", "-P", "4300")]
    [InlineData("do not apply to a Unix socket", "-H", "unix:///run/merlin/merlin.sock", "--ca", "{ca}")]
    [InlineData("needs an absolute socket path", "-H", "unix://merlin.sock")]
    [InlineData("is not host[:port], http(s)://host[:port] or unix:///path", "-H", "ftp://lb1")]
    [InlineData("--key: give the client certificate with --cert too", "--key", "{ca}")]
    [InlineData("--host http://… is plain HTTP/2, but --ca, --cert or --key ask for TLS", "-H", "http://lb1", "--ca", "{ca}")]
    [InlineData("--token-file: the token would cross the network to lb1 in the clear", "-H", "lb1", "--token-file", "{ca}")]
    [InlineData("--ca: /nonexistent/ca.crt does not exist", "--ca", "/nonexistent/ca.crt")]
    [InlineData("--cert: /nonexistent/me.crt does not exist", "--cert", "/nonexistent/me.crt")]
    public async Task ConflictingOrMissing_IsUsageError(string expected, params string[] args)
    {
        var ca = File("ca.crt");
        var run = await Meradm.RunAsync([.. args.Select(a => a.Replace("{ca}", ca)), "list"]);

        run.AssertUsageError(expected);
    }

    [Fact]
    public async Task TokenFile_ToLoopbackInTheClear_IsAllowed()
    {
        var run = await Meradm.RunAsync("-H", "localhost", "--token-file", File("token", "s3cret-token-0123456789"), "list");

        Assert.Equal(0, run.ExitCode);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
