using System.Diagnostics;
using Merlin.Linux;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>The merlin-agent binary at start-up, as an operator runs it: a state directory it cannot use, or one
/// another agent holds, ends it with exit 2 and a line naming --state-dir — before the node or the API is touched
/// (the API here is a port nothing listens on).</summary>
public sealed class AgentProgramTests : IDisposable
{
    private readonly TempDir _dir = new("agent-program");

    public void Dispose() => _dir.Dispose();

    private static async Task<(int Code, string Err)> RunAsync(params string[] args)
    {
        var command = Merlin.Lab.LabMerlin.Agent(); // how the lab runs the built agent
        var psi = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in command.Skip(1)) psi.ArgumentList.Add(a);
        foreach (var a in (string[])["--api", $"127.0.0.1:{LocalPorts.Free()}", "--service", "web", "--address", "198.18.0.51", .. args]) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        _ = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true); // it would be trying to attach: the test failed
        }
        return (p.ExitCode, await stderr);
    }

    [Fact]
    public async Task AStateDirThatIsAFile_ExitsTwo_NamingIt()
    {
        var file = _dir.File("not-a-dir");
        await File.WriteAllTextAsync(file, "x", TestContext.Current.CancellationToken);
        var (code, err) = await RunAsync("--state-dir", file);
        Assert.Equal(2, code);
        Assert.Contains($"merlin-agent: --state-dir: {file} cannot be used", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public async Task AStateDirAnotherAgentHolds_ExitsTwo_NamingItsPid()
    {
        var dir = _dir.File("state");
        using var held = ProcessLock.Take(dir, "merlin-agent"); // as a running agent holds it
        var (code, err) = await RunAsync("--state-dir", dir);
        Assert.Equal(2, code);
        Assert.Contains($"merlin-agent: --state-dir: {dir} is in use by another merlin-agent (PID {Environment.ProcessId}); one agent per node", err);
        Assert.False(File.Exists(Path.Combine(dir, "node.json"))); // nothing attached
    }
}
