using System.Net;
using Google.Protobuf.WellKnownTypes;
using Merlin.Cli;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Ipvs;
using Merlin.Ipvs;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Merlin.Daemon.Tests;

/// <summary>
/// The whole daemon (API, SQLite store, reconciler) with <c>--dataplane ipvs</c> against a real IPVS: in
/// the qemu guest (tests/vm/ipvs-guest), programming a namespace of its own (<c>--netns</c>). The
/// operator's hand is ipvsadm, run in that namespace.
/// </summary>
[Trait("Kernel", "ipvs")]
public sealed class IpvsDaemonTests : IDisposable
{
    private readonly ScratchNamespace _ns;
    private readonly TempDir _dir = new("ipvs-daemon");
    private readonly IpvsClient _kernel;
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public IpvsDaemonTests()
    {
        Requires.Ipvs();
        Requires.Root();
        _ns = new ScratchNamespace("ipvsd");
        _kernel = IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = _ns.Name });
    }

    public void Dispose()
    {
        _kernel.Dispose();
        _ns.Dispose();
        _dir.Dispose();
    }

    private Task<RunningDaemon> StartAsync(bool manageSysctls = false) => RunningDaemon.StartAsync(o => o with
    {
        StoreBackend = "sqlite",
        StorePath = _dir.File("merlin.db"),
        StateDir = _dir.File("state"),
        DataplaneKind = "ipvs",
        NetworkNamespace = _ns.Name,
        ManageSysctls = manageSysctls,
        SyncPeriod = TimeSpan.FromSeconds(1),
    });

    // A generous deadline: the first call in the emulated guest JIT-compiles gRPC on both ends.
    private static Task<(int Code, string Out, string Err)> Meradm(RunningDaemon daemon, params string[] args) =>
        daemon.MeradmAsync([.. args, "--timeout", "60s"]);

    private static ServiceKey Web => ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);

    private async Task WaitForKernelAsync(Func<IReadOnlyList<IpvsService>, bool> condition, string what)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        try
        {
            while (!condition(_kernel.GetServices(cts.Token))) await Task.Delay(100, cts.Token);
        }
        catch (OperationCanceledException) when (!Ct.IsCancellationRequested)
        {
            Assert.Fail($"the kernel never reached: {what}\n{_ns.Exec("ipvsadm", "-Ln")}");
        }
    }

    private uint WeightOf(ServiceKey service, string server) =>
        _kernel.GetDestinations(service, Ct).Single(d => d.Key.ToString() == server).Config.Weight;

    private static async Task MustAsync(RunningDaemon daemon, params string[] args)
    {
        var (code, _, err) = await Meradm(daemon, args);
        Assert.True(code == 0, $"meradm {string.Join(' ', args)}: exit {code}: {err}");
    }

    private static async Task AddWebAsync(RunningDaemon daemon)
    {
        await MustAsync(daemon, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh", "-b", "mh-port");
        await MustAsync(daemon, "server", "add", "web", "198.18.1.1:80", "-w", "10", "-f", "route");
        await MustAsync(daemon, "server", "add", "web", "198.18.1.2:80", "-w", "20", "-f", "route");
    }

    [Fact]
    public async Task ServicesCreatedThroughTheApi_AppearInTheKernel_AndGoWhenDeleted()
    {
        await using var daemon = await StartAsync();
        await AddWebAsync(daemon);

        await WaitForKernelAsync(s => s.Any(x => x.Key == Web) && _kernel.GetDestinations(Web, Ct).Count == 2, "web with two servers");
        Assert.Contains("-A -t 198.18.0.10:80 -s mh -b mh-port", _ns.Exec("ipvsadm", "-Sn"));
        Assert.Equal(20u, WeightOf(Web, "198.18.1.2:80"));

        await MustAsync(daemon, "server", "edit", "web", "198.18.1.2:80", "-w", "0");
        await WaitForKernelAsync(_ => WeightOf(Web, "198.18.1.2:80") == 0, "weight 0 on 198.18.1.2");

        await MustAsync(daemon, "service", "del", "web");
        await WaitForKernelAsync(s => s.Count == 0, "an empty table");
    }

    [Fact]
    public async Task IpvsadmEditsBehindItsBack_AreRepaired_AndAForeignServiceIsLeftAlone()
    {
        await using var daemon = await StartAsync();
        await AddWebAsync(daemon);
        await WaitForKernelAsync(s => s.Any(x => x.Key == Web) && _kernel.GetDestinations(Web, Ct).Count == 2, "web programmed");

        _ns.Exec("ipvsadm", "-A", "-t", "198.18.0.99:8080", "-s", "rr");           // kube-proxy's, say
        _ns.Exec("ipvsadm", "-a", "-t", "198.18.0.99:8080", "-r", "198.18.1.9:8080", "-m");
        _ns.Exec("ipvsadm", "-e", "-t", "198.18.0.10:80", "-r", "198.18.1.1:80", "-g", "-w", "99");
        _ns.Exec("ipvsadm", "-d", "-t", "198.18.0.10:80", "-r", "198.18.1.2:80");

        // The next resync (1 s) puts web back as the store says and leaves the foreign service as it is.
        await WaitForKernelAsync(_ => _kernel.GetDestinations(Web, Ct).Count == 2 && WeightOf(Web, "198.18.1.1:80") == 10, "web repaired");
        var foreign = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.99"), 8080, Protocol.Tcp);
        await Task.Delay(TimeSpan.FromSeconds(2.5), Ct); // two more resyncs
        Assert.Contains(_kernel.GetServices(Ct), s => s.Key == foreign);
        Assert.Single(_kernel.GetDestinations(foreign, Ct));
    }

    [Fact]
    public async Task ARestart_IssuesZeroKernelOperations()
    {
        await using var daemon = await StartAsync();
        await AddWebAsync(daemon);
        await WaitForKernelAsync(s => s.Any(x => x.Key == Web) && _kernel.GetDestinations(Web, Ct).Count == 2, "web programmed");

        await daemon.RestartAsync();
        await daemon.WaitForPassesAsync(3);

        var dataplane = (IpvsDataplane)daemon.Services.GetRequiredService<IDataplane>();
        Assert.Equal(0, dataplane.KernelWrites);
        var status = await daemon.Extended.StatusAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal("ipvs", status.Dataplane);
        Assert.Equal(0ul, status.OperationsApplied);
        Assert.True(status.Ready);
    }

    [Fact]
    public async Task StatusAndMetrics_ReportSysctlDrift_AndManageSysctlsFixesIt()
    {
        await using (var reporter = await StartAsync())
        {
            await reporter.WaitForPassesAsync(1);
            var (code, text, _) = await Meradm(reporter, "status");
            Assert.Equal(0, code);
            Assert.Contains("sysctl net.ipv4.vs.conn_reuse_mode", text);
            Assert.Contains("DRIFT: want 2", text);
            using var health = reporter.Health();
            var metrics = await health.GetStringAsync("/metrics", Ct);
            Assert.Contains("merlin_sysctl_drift{name=\"net.ipv4.vs.sloppy_tcp\"} 1", metrics);
        }

        await using var manager = await StartAsync(manageSysctls: true);
        await manager.WaitForPassesAsync(1);
        var status = await manager.Extended.StatusAsync(new Empty(), cancellationToken: Ct);
        Assert.All(status.Sysctls, s => Assert.Equal(s.Want, s.Have));
        Assert.Empty(status.Warnings);
        Assert.Equal("1", _ns.Exec("cat", "/proc/sys/net/ipv4/vs/sloppy_tcp").Trim());
    }

    [Fact]
    public async Task Counters_ReachMeradmListStats_AndMetrics()
    {
        await using var daemon = await StartAsync();
        await AddWebAsync(daemon);
        await WaitForKernelAsync(s => s.Any(x => x.Key == Web) && _kernel.GetDestinations(Web, Ct).Count == 2, "web programmed");

        var (code, table, err) = await Meradm(daemon, "list", "--stats");
        Assert.True(code == 0, err);
        Assert.Contains("CONNS", table);
        Assert.Contains("ACTIVE", table);
        var (_, json, _) = await Meradm(daemon, "list", "--stats", "-o", "json");
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        var web = doc.RootElement.GetProperty("services")[0];
        Assert.Equal(0, web.GetProperty("stats").GetProperty("connections").GetInt64());
        Assert.All(web.GetProperty("servers").EnumerateArray(), s => Assert.Equal(0, s.GetProperty("stats").GetProperty("activeConnections").GetInt32()));

        using var health = daemon.Health();
        var metrics = await health.GetStringAsync("/metrics", Ct);
        Assert.Contains("merlin_ipvs_connections_total{service=\"tcp:198.18.0.10:80\"} 0", metrics);
        Assert.Contains("merlin_ipvs_server_active_connections{service=\"tcp:198.18.0.10:80\",server=\"198.18.1.2:80\"} 0", metrics);
    }
}
