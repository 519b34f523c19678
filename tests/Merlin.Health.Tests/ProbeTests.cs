using System.Net;
using System.Net.Sockets;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Merlin.Health.Tests;

/// <summary>The real probes against real servers on loopback: HTTP, HTTPS, TCP and the gRPC health protocol.</summary>
public sealed class ProbeTests : IAsyncLifetime
{
    private WebApplication? _app;
    private int _http, _https, _grpc;
    private readonly HealthServiceImpl _grpcHealth = new();
    private readonly HealthProbes _probes = new();
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(2);
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(_grpcHealth);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0);
            k.Listen(IPAddress.Loopback, 0, l => l.UseHttps(SelfSigned()));
            k.Listen(IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2);
        });
        _app = builder.Build();
        _app.MapGet("/ok", () => Results.Text("ok"));
        _app.MapGet("/failing", () => Results.StatusCode(503));
        _app.MapGet("/moved", () => Results.Redirect("/ok"));
        _app.MapGet("/chunked", async (HttpContext c) =>
        {
            await c.Response.WriteAsync("first part, ");
            await c.Response.Body.FlushAsync();
            await c.Response.WriteAsync("second part");
        });
        _app.MapGet("/big", () => Results.Text(new string('x', 200_000)));
        _app.MapGet("/slow", async () => { await Task.Delay(TimeSpan.FromSeconds(10)); return Results.Text("late"); });
        _app.MapGrpcService<HealthServiceImpl>();
        await _app.StartAsync(Ct);
        var ports = _app.Urls.Select(u => new Uri(u)).ToList();
        _http = ports.First(u => u.Scheme == "http").Port;
        _https = ports.First(u => u.Scheme == "https").Port;
        _grpc = ports.Last(u => u.Scheme == "http").Port;
    }

    public async ValueTask DisposeAsync()
    {
        _probes.Dispose();
        if (_app is not null) await _app.DisposeAsync();
    }

    private Task<ProbeResult> Probe(string endpoint) =>
        _probes.ProbeAsync(IPAddress.Loopback, new Uri(endpoint.Replace("://:", "://check.invalid:")), Timeout, Ct);

    [Fact]
    public async Task Http_2xxIsHealthy_5xxAndRedirectsAreNot()
    {
        Assert.Equal(new ProbeResult(true, "HTTP 200"), await Probe($"http://:{_http}/ok"));
        Assert.Equal(new ProbeResult(false, "HTTP 503"), await Probe($"http://:{_http}/failing"));
        Assert.Equal(new ProbeResult(false, "HTTP 302"), await Probe($"http://:{_http}/moved")); // not followed
    }

    [Fact]
    public async Task Http_ChunkedBodiesAreSkippedOnAKeptConnection_ABodyTooLargeToSkipClosesIt()
    {
        for (var i = 0; i < 3; i++) Assert.Equal(new ProbeResult(true, "HTTP 200"), await Probe($"http://:{_http}/chunked"));
        Assert.Equal(1, _probes.HttpConnects);

        for (var i = 0; i < 2; i++) Assert.Equal(new ProbeResult(true, "HTTP 200"), await Probe($"http://:{_http}/big"));
        Assert.Equal(3, _probes.HttpConnects); // each /big check needed its own connection
    }

    [Fact]
    public async Task Https_WithTheServersOwnCertificate_IsChecked()
    {
        Assert.True((await Probe($"https://:{_https}/ok")).Healthy);
    }

    [Fact]
    public async Task Http_ThatDoesNotAnswerInTime_IsUnhealthy()
    {
        var result = await Probe($"http://:{_http}/slow");
        Assert.False(result.Healthy);
        Assert.Contains("no answer within 2000 ms", result.Detail);
    }

    [Fact]
    public async Task Tcp_ConnectIsHealthy_ARefusedPortIsNot()
    {
        Assert.True((await Probe($"tcp://:{_http}")).Healthy);
        var closed = ClosedPort();
        var refused = await Probe($"tcp://:{closed}");
        Assert.False(refused.Healthy);
        Assert.Equal("ConnectionRefused", refused.Detail);
        Assert.False((await Probe($"http://:{closed}/ok")).Healthy);
    }

    [Fact]
    public async Task Grpc_ServingIsHealthy_NotServingIsNot()
    {
        _grpcHealth.SetStatus("", HealthCheckResponse.Types.ServingStatus.Serving);
        _grpcHealth.SetStatus("ingress", HealthCheckResponse.Types.ServingStatus.NotServing);

        Assert.Equal(new ProbeResult(true, "gRPC Serving"), await Probe($"grpc://:{_grpc}"));
        Assert.Equal(new ProbeResult(false, "gRPC NotServing"), await Probe($"grpc://:{_grpc}/ingress"));
        Assert.False((await Probe($"grpc://:{_grpc}/unknown-service")).Healthy);
    }

    /// <summary>A real server's own certificate: self-signed, for a name that is not its address.</summary>
    internal static System.Security.Cryptography.X509Certificates.X509Certificate2 SelfSigned()
    {
        using var key = System.Security.Cryptography.RSA.Create(2048);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest(
            "CN=ingress.example", key, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
        using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        return System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadPkcs12(
            cert.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pfx), null);
    }

    private static int ClosedPort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
