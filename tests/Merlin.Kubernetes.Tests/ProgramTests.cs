using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Merlin.Kubernetes.Tests.Controller;
using Merlin.Testing;

namespace Merlin.Kubernetes.Tests;

/// <summary>The merlin-k8s binary as an operator runs it: flags checked and named, /healthz, /readyz and /metrics
/// served, SIGTERM a clean stop.</summary>
public class ProgramTests
{
    private static string Binary => Path.Combine(AppContext.BaseDirectory, "merlin-k8s.dll");

    private static async Task<(int Code, string Out, string Err)> RunAsync(params string[] args)
    {
        using var p = Start(args);
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        await p.WaitForExitAsync(timeout.Token);
        return (p.ExitCode, await stdout, await stderr);
    }

    private static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Binary);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("KUBECONFIG");
        psi.Environment.Remove("KUBERNETES_SERVICE_HOST");
        return Process.Start(psi)!;
    }

    [Theory]
    [InlineData("--merlin-api", "", "--merlin-api: \"\" names no host")]
    [InlineData("--merlin-api", "lb:99999", "--merlin-api: \"99999\" is not a port")]
    [InlineData("--drain-period", "5x", "--drain-period:")]
    [InlineData("--listen", "everywhere", "--listen: \"everywhere\" is not ip:port")]
    [InlineData("--node-health-check", "http://node:10256/healthz", "--node-health-check: \"http://node:10256/healthz\" must not name a host")]
    [InlineData("--workers", "0", "--workers: \"0\" is not a whole number from 1 to 64")]
    [InlineData("--kubeconfig", "/nonexistent/kubeconfig", "--kubeconfig: /nonexistent/kubeconfig does not exist")]
    public async Task BadFlag_ExitsTwo_NamingIt(string flag, string value, string expected)
    {
        string[] args = flag == "--merlin-api" ? [flag, value] : ["--merlin-api", "127.0.0.1:4282", flag, value];
        var (code, _, err) = await RunAsync(args);
        Assert.Equal(2, code);
        Assert.Contains(expected, err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public async Task MissingMerlinApi_ExitsTwo()
    {
        var (code, _, err) = await RunAsync();
        Assert.Equal(2, code);
        Assert.Contains("--merlin-api", err);
    }

    [Fact]
    public async Task Running_ServesHealthReadinessAndMetrics_StopsCleanlyOnSigterm()
    {
        await using var c = await ControllerCluster.StartAsync();
        using var dir = new TempDir("merlin-k8s-run");
        var kubeconfig = c.Api.WriteKubeconfig(dir.File("kubeconfig"));
        c.Pool("default", "198.18.100.10-198.18.100.20");
        c.Node("n1", "127.0.0.11");
        var port = LocalPorts.Free();
        using var p = Start("--kubeconfig", kubeconfig, "--merlin-api", $"127.0.0.1:{c.MerlinPort}", "--listen", $"127.0.0.1:{port}",
            "--lease-namespace", "merlin-system", "--identity", "replica-1", "--node-health-check", "", "--drain-period", "10s");
        var output = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            c.Service("web");
            await c.ServiceStatusAsync("web", s => ControllerCluster.Ingress(s) is not null, "an address from the binary");
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(5) };
            Assert.Equal("ok\n", await http.GetStringAsync("/healthz", TestContext.Current.CancellationToken));
            Assert.Equal("leader\n", await http.GetStringAsync("/readyz", TestContext.Current.CancellationToken));
            var metrics = await ControllerCluster.EventuallyAsync(async () => await http.GetStringAsync("/metrics", TestContext.Current.CancellationToken),
                m => m.Contains("merlin_k8s_pool_addresses{pool=\"default\",state=\"used\"} 1"), "the pool's used address in /metrics");
            Assert.Contains("merlin_k8s_leader 1", metrics);
            Assert.Contains("merlin_k8s_pool_addresses{pool=\"default\",state=\"total\"} 11", metrics);
            Assert.Contains("merlin_k8s_reconcile_duration_seconds_count", metrics);
            Assert.Contains("merlin_k8s_reconcile_errors_total", metrics);
            Assert.Contains("merlin_k8s_first_sync_seconds", metrics);
            // Every family with the name and type it had before the controller moved to the one metrics API (the
            // errors' reason label only shows once a reconcile has failed, so labels are checked where series are sure).
            var families = PrometheusText.Families(metrics);
            Assert.Equal("""
                merlin_k8s_first_sync_seconds gauge
                merlin_k8s_leader gauge
                merlin_k8s_merlin_writes_total counter
                merlin_k8s_pool_addresses gauge
                merlin_k8s_queue_depth gauge
                merlin_k8s_reconcile_duration_seconds histogram
                merlin_k8s_reconcile_errors_total counter
                """, string.Join("\n", families.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => $"{f.Key} {f.Value.Type}")));
            Assert.Equal(["pool", "state"], families["merlin_k8s_pool_addresses"].Labels);
        }
        finally
        {
            if (!p.HasExited) Syscall.Kill(p.Id, 15);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            await p.WaitForExitAsync(timeout.Token);
        }
        Assert.True(p.ExitCode == 0, await output);
    }

    private static class Syscall
    {
        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
        public static extern int Kill(int pid, int signal);
    }
}
