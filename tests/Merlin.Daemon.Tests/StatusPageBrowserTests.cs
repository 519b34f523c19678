using System.Diagnostics;
using System.Net;
using Merlin.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using PuppeteerSharp;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The status page in a real browser (Debian's headless chromium, driven by PuppeteerSharp) against a daemon on
/// loopback, as an operator watches it while working with meradm: a new service appears, a real server that dies
/// turns unhealthy, a drain counts down. Screenshots go to tests/Merlin.Daemon.Tests/TestResults/screenshots
/// (or $MERLIN_SCREENSHOTS).
/// </summary>
public sealed class StatusPageBrowserTests : IAsyncLifetime
{
    private const string Chromium = "/usr/bin/chromium";

    private readonly TempDir _dir = new("status-page-browser");
    private WebApplication? _backend;
    private int _backendPort;
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string Screenshots => Environment.GetEnvironmentVariable("MERLIN_SCREENSHOTS") is { Length: > 0 } dir ? dir
        : Path.Combine(Repository.Root, "tests", "Merlin.Daemon.Tests", "TestResults", "screenshots");

    /// <summary>The real server's health endpoint: an HTTP server on loopback that the test stops to "kill" the server.</summary>
    public async ValueTask InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        _backend = builder.Build();
        _backend.MapGet("/healthz", () => Results.Text("ok"));
        await _backend.StartAsync(Ct);
        _backendPort = new Uri(_backend.Urls.First()).Port;
    }

    public async ValueTask DisposeAsync()
    {
        if (_backend is not null) await _backend.DisposeAsync();
        _dir.Dispose();
    }

    [Fact]
    public async Task ThePage_ShowsANewService_AServerThatDies_AndADrainCountingDown()
    {
        if (!File.Exists(Chromium)) Requires.Missing($"{Chromium} (apt-get install chromium)");
        Directory.CreateDirectory(Screenshots);
        await using var daemon = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("merlin.db") });

        await using var browser = await Puppeteer.LaunchAsync(new LaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            // As root chromium runs only without its sandbox; /dev/shm may be small on CI machines.
            Args = [.. Environment.IsPrivilegedProcess ? new[] { "--no-sandbox" } : [], "--disable-dev-shm-usage", "--disable-gpu"],
            Timeout = 60_000,
        });
        await using var page = await browser.NewPageAsync();
        await page.SetViewportAsync(new ViewPortOptions { Width = 1200, Height = 800 });
        var external = new List<string>();
        page.Request += (_, e) => { if (!e.Request.Url.StartsWith($"http://127.0.0.1:{daemon.Options.HealthPort}/", StringComparison.Ordinal)) external.Add(e.Request.Url); };
        await page.GoToAsync($"http://127.0.0.1:{daemon.Options.HealthPort}/", new NavigationOptions { Timeout = 30_000 });
        await page.WaitForSelectorAsync("body[data-polls]", new WaitForSelectorOptions { Timeout = 10_000 });
        Assert.Contains("No services in the store", await page.EvaluateExpressionAsync<string>("document.getElementById('services').textContent"));

        // 1. A service added with meradm is on the page within 2 s (the page polls every second).
        await MeradmAsync(daemon, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh");
        await page.WaitForSelectorAsync("[data-service='web']", new WaitForSelectorOptions { Timeout = 2_000 });
        Assert.Contains("tcp:198.18.0.10:80", await Text(page, "[data-service='web'] h2"));

        // 2. Its real server is healthy, then dies and turns unhealthy, its effective weight 0.
        var server = "127.0.0.1:80";
        await MeradmAsync(daemon, "server", "add", "web", server, "-w", "5", "-f", "route",
            "--health-endpoint", $"http://:{_backendPort}/healthz", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "2");
        await MeradmAsync(daemon, "server", "add", "web", "127.0.0.2:80", "-w", "3", "-f", "route");
        var row = $"[data-service='web'] tr[data-server='{server}']";
        await page.WaitForSelectorAsync($"{row}[data-verdict='up']", new WaitForSelectorOptions { Timeout = 15_000 });
        await page.ScreenshotAsync(Path.Combine(Screenshots, "1-service-up.png"));

        await _backend!.StopAsync(Ct); // the real server is gone: its checks are refused
        await page.WaitForSelectorAsync($"{row}[data-verdict='down'][data-effective-weight='0']", new WaitForSelectorOptions { Timeout = 15_000 });
        Assert.Contains("down", await Text(page, $"{row} .health"));
        Assert.Contains("5 → 0", await Text(page, $"{row} td[data-label='weight']"));
        Assert.Contains("1 service, 2 servers", await Text(page, "#reconciler"));
        Assert.Contains("1 down", await Text(page, "#reconciler"));
        await page.ScreenshotAsync(Path.Combine(Screenshots, "2-server-down.png"));

        // 3. A drain counts down on the page.
        var drained = "[data-service='web'] tr[data-server='127.0.0.2:80']";
        await MeradmAsync(daemon, "server", "drain", "web", "127.0.0.2:80", "--period", "120s");
        await page.WaitForSelectorAsync($"{drained}:not([data-drain-left=''])", new WaitForSelectorOptions { Timeout = 5_000 });
        var first = await DrainLeftAsync(page, drained);
        Assert.InRange(first, 100, 120);
        Assert.Matches(@"drains in \d+:\d\d", await Text(page, $"{drained} .drain"));
        var later = first;
        var watch = Stopwatch.StartNew();
        while (later >= first - 1 && watch.Elapsed < TimeSpan.FromSeconds(15))
        {
            await Task.Delay(250, Ct);
            later = await DrainLeftAsync(page, drained);
        }
        Assert.True(later <= first - 2, $"the drain did not count down: {first} s left, then {later} s");
        await page.ScreenshotAsync(Path.Combine(Screenshots, "3-drain.png"), new ScreenshotOptions { FullPage = true });

        // The same page on a phone's screen: the server rows become labelled blocks, nothing runs off the side.
        await page.SetViewportAsync(new ViewPortOptions { Width = 390, Height = 844, DeviceScaleFactor = 2, IsMobile = true, HasTouch = true });
        await Task.Delay(1_200, Ct); // one more poll at this size
        Assert.True(await page.EvaluateExpressionAsync<bool>("document.documentElement.scrollWidth <= window.innerWidth + 1"),
            "the page is wider than a phone's screen");
        await page.ScreenshotAsync(Path.Combine(Screenshots, "4-phone.png"), new ScreenshotOptions { FullPage = true });

        Assert.Empty(external); // nothing fetched from anywhere but the daemon
    }

    private static async Task MeradmAsync(RunningDaemon daemon, params string[] args)
    {
        var (code, _, err) = await daemon.MeradmAsync(args);
        Assert.True(code == 0, $"meradm {string.Join(' ', args)}: {err}");
    }

    private static Task<string> Text(IPage page, string selector) =>
        page.EvaluateFunctionAsync<string>("s => document.querySelector(s)?.textContent ?? ''", selector);

    private static async Task<int> DrainLeftAsync(IPage page, string selector) =>
        int.Parse(await page.EvaluateFunctionAsync<string>("s => document.querySelector(s).dataset.drainLeft", selector), System.Globalization.CultureInfo.InvariantCulture);
}
