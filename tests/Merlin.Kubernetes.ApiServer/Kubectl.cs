using System.Diagnostics;
using Xunit;
using Merlin.Testing;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// Runs the machine's kubectl against a <see cref="TestApiServer"/>: its own kubeconfig and cache dir (never
/// ~/.kube), KUBECONFIG unset, HOME pointed at a temp dir, a bounded request timeout, and a hard kill
/// if it hangs anyway.
/// </summary>
public sealed class Kubectl : IDisposable
{
    readonly TempDir _dir = new("kubectl");
    readonly string _kubeconfig;

    public Kubectl(TestApiServer server)
    {
        _kubeconfig = server.WriteKubeconfig(_dir.File("kubeconfig"));
        Directory.CreateDirectory(_dir.File("home"));
    }

    /// <summary>Skips outside CI (fails in CI) when kubectl is not installed.</summary>
    public static void Require() => Requires.Command("kubectl", "apt-get install kubernetes-client, or scripts/setup");

    public string File(string name, string content)
    {
        var path = _dir.File(name);
        System.IO.File.WriteAllText(path, content);
        return path;
    }

    public async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(params string[] args)
    {
        var psi = new ProcessStartInfo(Requires.FindOnPath("kubectl")!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add($"--kubeconfig={_kubeconfig}");
        psi.ArgumentList.Add($"--cache-dir={_dir.File("cache")}");
        if (!args.Any(a => a.StartsWith("--request-timeout", StringComparison.Ordinal))) psi.ArgumentList.Add("--request-timeout=10s");
        psi.Environment.Remove("KUBECONFIG");
        psi.Environment["HOME"] = _dir.File("home");
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"kubectl {string.Join(' ', args)} did not finish in 60 s");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs and asserts success, returning stdout.</summary>
    public async Task<string> OkAsync(params string[] args)
    {
        var (code, stdout, stderr) = await RunAsync(args);
        Assert.True(code == 0, $"kubectl {string.Join(' ', args)} exited {code}\nstdout: {stdout}\nstderr: {stderr}");
        return stdout;
    }

    public void Dispose() => _dir.Dispose();
}
