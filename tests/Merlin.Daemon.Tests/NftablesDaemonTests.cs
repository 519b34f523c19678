using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The whole daemon with <c>--dataplane nftables</c>, programming a namespace of its own (<c>--netns</c>): what
/// the dataplane cannot forward reaches <c>meradm status</c> through the diagnostics capability, as IPVS's
/// sysctl drift does.
/// </summary>
public sealed class NftablesDaemonTests : IDisposable
{
    private readonly ScratchNamespace _ns;
    private readonly TempDir _dir = new("nft-daemon");

    public NftablesDaemonTests()
    {
        Requires.Root();
        Requires.Command("nft", "apt-get install nftables");
        _ns = new ScratchNamespace("nftd");
    }

    public void Dispose()
    {
        _ns.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public async Task AServiceItCannotForward_IsAWarningInMeradmStatus_UntilItCanForwardIt()
    {
        // No --interface: route (DSR) servers cannot be programmed, masq (NAT) servers can.
        await using var daemon = await RunningDaemon.StartAsync(o => o with
        {
            StoreBackend = "sqlite",
            StorePath = _dir.File("merlin.db"),
            DataplaneKind = "nftables",
            HashSeed = 0x5eed1234,
            NetworkNamespace = _ns.Name,
        });
        await MustAsync(daemon, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh");
        await MustAsync(daemon, "server", "add", "web", "198.18.1.1:80", "-w", "1", "-f", "route");

        var status = await StatusUntilAsync(daemon, s => s.Contains("--interface"), "a warning naming --interface");
        Assert.Contains("warning", status);
        Assert.Contains("198.18.0.10:80", status);

        await MustAsync(daemon, "server", "edit", "web", "198.18.1.1:80", "-f", "masq");
        status = await StatusUntilAsync(daemon, s => !s.Contains("warning"), "no warning once the server is NAT");
        Assert.Contains("dataplane", status);
    }

    private static async Task MustAsync(RunningDaemon daemon, params string[] args)
    {
        var (code, _, err) = await daemon.MeradmAsync(args);
        Assert.True(code == 0, $"meradm {string.Join(' ', args)}: exit {code}: {err}");
    }

    /// <summary><c>meradm status</c> until its output satisfies <paramref name="condition"/> (each reconcile pass may change it); 30 s at most.</summary>
    private static async Task<string> StatusUntilAsync(RunningDaemon daemon, Func<string, bool> condition, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var output = "";
        for (var attempt = 0; attempt < 300 && clock.Elapsed < TimeSpan.FromSeconds(30); attempt++)
        {
            daemon.Loop.Trigger();
            var (code, stdout, err) = await daemon.MeradmAsync("status");
            Assert.True(code == 0, $"meradm status: exit {code}: {err}");
            output = stdout;
            if (condition(output)) return output;
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Fail($"meradm status never showed {what}; last output:\n{output}\nthe daemon's log:\n{daemon.Logs.Text}");
        return output;
    }
}
