using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Merlin.Lab.Server;
using Merlin.Testing;

namespace Merlin.Lab.Tests;

/// <summary>Labs leave nothing behind — after success, after a throw, after a crashed run — and do not collide.</summary>
public sealed class LabLifecycleTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Teardown_removes_namespaces_processes_and_files()
    {
        Lab.Require();
        var lab = await Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 2, Router = true }, Ct);
        var prefix = lab.Prefix;
        Assert.Equal(7, lab.Namespaces.Count); // bridge, router, client, lb1, lb2, rs1, rs2
        Assert.Equal(lab.Namespaces.Order(StringComparer.Ordinal), Lab.ListNamespaces(prefix));
        var servers = await lab.StartServersAsync(ct: Ct);
        var pids = servers.Select(s => s.Pid).ToList();
        // A process the lab did not start itself: a shell's background child, reparented away from us.
        var stray = int.Parse((await lab["rs1"].ExecAsync("sh", "-c", "sleep 60 >/dev/null 2>&1 </dev/null & echo $!")).StandardOutput.Trim(), CultureInfo.InvariantCulture);
        pids.Add(stray);
        lab["rs1"].SetHealthy(false);
        Assert.True(Directory.Exists(lab.TempPath));

        var clock = Stopwatch.StartNew();
        await lab.DisposeAsync();
        TestContext.Current.TestOutputHelper?.WriteLine($"setup {lab.SetupTime.TotalMilliseconds:0} ms, teardown {clock.ElapsedMilliseconds} ms (7 namespaces, 3 processes)");

        var list = await ListNetnsAsync();
        Assert.DoesNotContain(prefix, list);
        Assert.Empty(Lab.ListNamespaces(prefix));
        Assert.All(pids, pid => Assert.False(Running(pid), $"pid {pid} survived the teardown"));
        Assert.False(Directory.Exists(lab.TempPath));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => lab.Client.RunAsync("true"));
        await lab.DisposeAsync(); // twice is harmless
    }

    [Fact]
    public async Task A_test_that_throws_midway_still_cleans_up()
    {
        Lab.Require();
        string? prefix = null;
        var pids = new List<int>();
        var e = await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 1 }, Ct);
            prefix = lab.Prefix;
            pids.Add((await lab["rs1"].StartServerAsync(ct: Ct)).Pid);
            pids.Add(lab.Client.Start("sleep", "60").Pid);
            await using var hold = lab.Client.StartHold(lab["rs1"].Endpoint(Lab.EchoPort), new LabHoldOptions { Connections = 2, Duration = TimeSpan.FromSeconds(60) });
            pids.Add(hold.Process.Pid);
            await hold.WaitConnectedAsync(ct: Ct);
            throw new InvalidOperationException("the test failed here");
        });
        Assert.Equal("the test failed here", e.Message);
        Assert.NotNull(prefix);
        Assert.Empty(Lab.ListNamespaces(prefix));
        Assert.DoesNotContain(prefix, await ListNetnsAsync());
        Assert.All(pids, pid => Assert.False(Running(pid), $"pid {pid} survived"));
    }

    [Fact]
    public async Task Parallel_labs_do_not_collide()
    {
        Lab.Require();
        var labs = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => Lab.CreateAsync(new LabOptions { RealServers = 1 }, Ct)));
        try
        {
            Assert.Equal(3, labs.Select(l => l.Prefix).Distinct().Count());
            Assert.Equal(labs.Sum(l => l.Namespaces.Count), labs.SelectMany(l => l.Namespaces).Distinct().Count());
            // Same addresses in every lab, yet each client reaches only its own lab's server.
            await Task.WhenAll(labs.Select(l => l["rs1"].StartServerAsync(new LabServerOptions { Name = l.Prefix + "rs1" }, Ct)));
            var reports = await Task.WhenAll(labs.Select(l => l.Client.HttpAsync(l["rs1"].Endpoint(Lab.HttpPort), new LabRequestOptions { Count = 10 }, Ct)));
            for (var i = 0; i < labs.Length; i++)
            {
                Assert.True(reports[i].Successes == 10, ReportJson.Write(reports[i]));
                Assert.Equal(labs[i].Prefix + "rs1", Assert.Single(reports[i].PerServer).Key);
            }
        }
        finally
        {
            await Task.WhenAll(labs.Select(l => l.DisposeAsync().AsTask()));
        }
        Assert.All(labs, l => Assert.Empty(Lab.ListNamespaces(l.Prefix)));
    }

    [Fact]
    public async Task The_sweeper_removes_only_namespaces_of_dead_lab_runs()
    {
        Lab.Require();
        var hex = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));
        // A PID above pid_max can never belong to a live process.
        var deadPid = long.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim(), CultureInfo.InvariantCulture) + 1;
        var stale = $"ml{hex}-{deadPid}-rs1";
        var live = $"ml{hex}-{Environment.ProcessId}-rs1";
        var foreign = $"mltest{hex}-1-rs1"; // lab-like, but not the lab's pattern
        Process? inside = null;
        // Other test processes sweep when they build their first lab: hold the sweep lock, so only this
        // test's sweep can find the stale namespace it plants.
        var held = await Lab.LockSweepsAsync();
        try
        {
            foreach (var n in new[] { stale, live, foreign }) await Ip("netns", "add", n);
            // A leftover process still inside the stale namespace: the sweeper must end it too.
            inside = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", stale, "sleep", "60"]) { UseShellExecute = false })!;
            await WaitUntil(async () => (await Run("ip", "netns", "pids", stale)).Contains(inside.Id.ToString(CultureInfo.InvariantCulture)));

            var removed = await Lab.SweepStaleAsync(held);

            Assert.Contains(stale, removed);
            Assert.DoesNotContain(live, removed);
            Assert.DoesNotContain(foreign, removed);
            var names = Lab.ListNamespaces();
            Assert.DoesNotContain(stale, names);
            Assert.Contains(live, names);
            Assert.Contains(foreign, names);
            Assert.True(inside.WaitForExit(5000), "the process inside the stale namespace was not killed");
            Assert.Equal(Environment.ProcessId, Lab.CreatorPid(live));
            Assert.Null(Lab.CreatorPid(foreign));
        }
        finally
        {
            held.Dispose();
            if (inside is { HasExited: false }) inside.Kill();
            inside?.Dispose();
            foreach (var n in new[] { stale, live, foreign }) await Run("ip", "netns", "del", n);
        }
    }

    private static bool Running(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[stat.LastIndexOf(')') + 2] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static Task<string> ListNetnsAsync() => Run("ip", "netns", "list");

    private static async Task Ip(params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo("ip", args) { UseShellExecute = false, RedirectStandardError = true })!;
        var err = await p.StandardError.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct);
        Assert.True(p.ExitCode == 0, $"ip {string.Join(' ', args)}: {err}");
    }

    private static async Task<string> Run(string file, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = await p.StandardOutput.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct);
        return output;
    }

    private static Task WaitUntil(Func<Task<bool>> condition) => Poll.UntilAsync(condition, "the lab's state", interval: TimeSpan.FromMilliseconds(20), ct: Ct);
}
