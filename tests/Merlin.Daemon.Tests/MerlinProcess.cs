using System.Diagnostics;
using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>The merlin executable built beside the tests, run as a process the way an operator starts it.</summary>
public static class MerlinProcess
{
    /// <summary>
    /// Runs merlin with <paramref name="args"/> (none of the test's MERLIN_* variables) until it exits; one still
    /// running after <paramref name="timeout"/> is killed by its PID and the test fails.
    /// </summary>
    public static async Task<(int Code, string Out, string Err)> RunAsync(TimeSpan timeout, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "merlin.dll"));
        foreach (var arg in args) start.ArgumentList.Add(arg);
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("MERLIN_", StringComparison.Ordinal)).ToList()) start.Environment.Remove(key);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        limit.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(CancellationToken.None);
            Assert.Fail($"merlin {string.Join(' ', args)} still ran after {timeout.TotalSeconds:0} s and was killed\n{await stdout}\n{await stderr}");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>The flags that keep a started daemon to itself: free loopback ports, its store and state in <paramref name="dir"/>.</summary>
    public static string[] Contained(string dir) =>
    [
        "--port", LocalPorts.Free().ToString(), "--health-port", LocalPorts.Free().ToString(),
        "--store-path", Path.Combine(dir, "merlin.db"), "--state-dir", Path.Combine(dir, "state"),
    ];
}
