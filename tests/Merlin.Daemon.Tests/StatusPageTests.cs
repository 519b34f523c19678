using System.Net;
using System.Text.Json;
using Merlin.Api.Security;
using Merlin.Testing;
using Microsoft.AspNetCore.Http;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The status page on the health port, without a browser: what it is served as, what its JSON says about services
/// and servers, and who may read it. (The page itself, in Chromium: StatusPageBrowserTests.)
/// </summary>
public sealed class StatusPageTests : IDisposable
{
    private readonly TempDir _dir = new("status-page");
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose() => _dir.Dispose();

    private Task<RunningDaemon> StartAsync() => RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") });

    [Fact]
    public async Task ThePage_IsOneSelfContainedHtmlDocument_OnTheHealthPort()
    {
        await using var daemon = await StartAsync();
        using var http = daemon.Health();
        using var response = await http.GetAsync("/", Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/html", response.Content.Headers.ContentType?.MediaType);
        var html = await response.Content.ReadAsStringAsync(Ct);
        Assert.StartsWith("<!doctype html>", html);
        Assert.Contains("name=\"viewport\"", html); // laid out for phones
        // Nothing from elsewhere: no URL with a scheme, no external script or stylesheet, only its own JSON.
        Assert.DoesNotContain("://", html);
        Assert.DoesNotContain("<link", html);
        Assert.DoesNotContain("<script src", html);
        Assert.Contains("fetch(\"status/detail\"", html);
    }

    [Fact]
    public async Task TheDetail_ShowsServicesServersWeightsHealthAndDrains()
    {
        await using var daemon = await StartAsync();
        Assert.Equal(0, (await daemon.MeradmAsync("service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh")).Code);
        // A server whose check fails (nothing listens on the port) and one that drains.
        Assert.Equal(0, (await daemon.MeradmAsync("server", "add", "web", "127.0.0.1:80", "-w", "5", "-f", "route",
            "--health-endpoint", $"tcp://:{LocalPorts.Free()}", "--health-period", "1s", "--health-timeout", "500ms", "--health-up", "1", "--health-down", "1")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("server", "add", "web", "127.0.0.2:80", "-w", "3", "-f", "route")).Code);
        Assert.Equal(0, (await daemon.MeradmAsync("server", "drain", "web", "127.0.0.2:80", "--period", "300s")).Code);

        using var http = daemon.Health();
        JsonElement web = default, root = default;
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        // The counts and effective weights come from the reconciler's last pass and the verdict from the checker: wait for both to catch up.
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            using var detail = JsonDocument.Parse(await http.GetStringAsync("/status/detail", Ct));
            root = detail.RootElement.Clone();
            web = root.GetProperty("virtualServices").EnumerateArray().FirstOrDefault(s => s.GetProperty("id").GetString() == "web");
            if (web.ValueKind == JsonValueKind.Object && Server(web, "127.0.0.1:80").TryGetProperty("health", out var h)
                && h.GetProperty("verdict").GetString() == "down" && Server(web, "127.0.0.1:80").TryGetProperty("effectiveWeight", out var w) && w.GetUInt32() == 0
                && Server(web, "127.0.0.2:80") is { ValueKind: JsonValueKind.Object } d && d.TryGetProperty("effectiveWeight", out var drained) && drained.GetUInt32() == 0
                && root.TryGetProperty("servers", out var count) && count.ValueKind == JsonValueKind.Number && count.GetUInt32() == 2) break;
            await Task.Delay(100, Ct);
        }
        Assert.Equal(1u, root.GetProperty("services").GetUInt32()); // /status's fields as they are
        Assert.Equal(2u, root.GetProperty("servers").GetUInt32());
        Assert.Equal("tcp:198.18.0.10:80", web.GetProperty("key").GetString());
        Assert.Equal("mh", web.GetProperty("scheduler").GetString());

        var checkedServer = Server(web, "127.0.0.1:80");
        Assert.Equal(5u, checkedServer.GetProperty("weight").GetUInt32());          // as configured
        Assert.Equal(0u, checkedServer.GetProperty("effectiveWeight").GetUInt32()); // as programmed: its check fails
        var health = checkedServer.GetProperty("health");
        Assert.Equal("down", health.GetProperty("verdict").GetString());
        Assert.NotEqual(JsonValueKind.Null, health.GetProperty("lastCheck").ValueKind);

        var draining = Server(web, "127.0.0.2:80");
        Assert.Equal(3u, draining.GetProperty("weight").GetUInt32());
        Assert.Equal(0u, draining.GetProperty("effectiveWeight").GetUInt32());
        Assert.InRange(draining.GetProperty("drainSecondsLeft").GetDouble(), 200, 300);
        Assert.False(draining.TryGetProperty("health", out _)); // no check configured
    }

    private static JsonElement Server(JsonElement service, string address) =>
        service.GetProperty("servers").EnumerateArray().FirstOrDefault(s => s.GetProperty("address").GetString() == address);

    [Theory]
    [InlineData(false, "198.18.0.7", true)]  // the API asks for no credentials: whoever reaches the health port
    [InlineData(true, "127.0.0.1", true)]    // secured: loopback callers …
    [InlineData(true, "::1", true)]
    [InlineData(true, "198.18.0.7", false)]  // … only
    public void WhoMayReadThePage_DependsOnWhetherTheApiAsksForCredentials(bool secured, string caller, bool served)
    {
        var credentials = new ApiCredentials { Tokens = secured ? BearerTokens.Parse("0123456789abcdef0123 admin\n") : null };
        var http = new DefaultHttpContext();
        http.Connection.RemoteIpAddress = IPAddress.Parse(caller);
        var refused = StatusPage.Refused(http, credentials);
        Assert.Equal(served, refused is null);
        if (refused is IStatusCodeHttpResult code) Assert.Equal(403, code.StatusCode);
    }
}
