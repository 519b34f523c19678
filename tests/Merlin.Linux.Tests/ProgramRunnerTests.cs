using Merlin.Testing;

namespace Merlin.Linux.Tests;

public sealed class ProgramRunnerTests
{
    [Fact]
    public async Task RunAsync_ArgumentsReachTheProgramAsGiven_NoShellExpandsThem()
    {
        var result = await ProgramRunner.RunAsync(new ProgramCommand("/bin/echo", ["$HOME;", "a  b", "*"]), input: null, TestContext.Current.CancellationToken);

        Assert.Equal(0, result.ExitCode);
        Assert.Equal("$HOME; a  b *\n", result.Output);
    }

    [Fact]
    public async Task RunAsync_InputAndExitCode_ComeBackWithBothOutputs()
    {
        var result = await ProgramRunner.RunAsync(new ProgramCommand("/bin/sh", ["-c", "cat; echo oops >&2; exit 3"]), "from stdin\n", TestContext.Current.CancellationToken);

        Assert.Equal(new ProgramResult(3, "from stdin\n", "oops\n"), result);
    }

    [Fact]
    public async Task RunAsync_MissingProgram_ThrowsNamingTheReason()
    {
        var e = await Assert.ThrowsAnyAsync<System.ComponentModel.Win32Exception>(() =>
            ProgramRunner.RunAsync(new ProgramCommand("/nonexistent/merlin-no-such-program", []), input: null, TestContext.Current.CancellationToken));
        Assert.Contains("No such file", e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Start_EveryLineOfStdoutAndStderr_IsLoggedUnderTheCallersCategory()
    {
        var logs = new ListLoggerFactory();
        using var child = ProgramRunner.Start(new ProgramCommand("/bin/sh", ["-c", "echo first; echo second >&2; exit 7"]), logs.CreateLogger("engine"));

        await child.Exited.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);

        Assert.Equal(7, child.ExitCode);
        Assert.Contains(logs.Lines, l => l.EndsWith("Information engine: first", StringComparison.Ordinal));
        Assert.Contains(logs.Lines, l => l.EndsWith("Information engine: second", StringComparison.Ordinal));
    }

    [Fact]
    public async Task StopAsync_ChildThatEndsOnSigterm_StopsWithoutKill()
    {
        using var child = ProgramRunner.Start(new ProgramCommand("/bin/sleep", ["30"]), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

        Assert.True(await child.StopAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.True(child.HasExited);
    }

    [Fact]
    public async Task StopAsync_ChildThatIgnoresSigterm_IsKilledAfterTheWait()
    {
        // The shell ignores SIGTERM and says so once the trap is set, so the signal cannot come too early.
        var logs = new ListLoggerFactory();
        using var child = ProgramRunner.Start(new ProgramCommand("/bin/sh", ["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]), logs.CreateLogger("engine"));
        for (var i = 0; i < 200 && !logs.Lines.Any(l => l.EndsWith("ready", StringComparison.Ordinal)); i++) await Task.Delay(25, TestContext.Current.CancellationToken);

        Assert.False(await child.StopAsync(TimeSpan.FromMilliseconds(300), TestContext.Current.CancellationToken));
        await child.Exited.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task StopAsyncByPid_ProcessNotStartedByTheRunner_Stops()
    {
        using var other = System.Diagnostics.Process.Start("/bin/sleep", "30");

        Assert.True(await ProgramRunner.StopAsync(other.Id, TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.True(other.WaitForExit(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Runs_RecognisesAProgramByNameAndArgument()
    {
        using var other = System.Diagnostics.Process.Start("/bin/sleep", "29.5");
        try
        {
            // Start returns after the fork: until the child's exec, its command line is the test host's.
            await Poll.UntilAsync(() => File.ReadAllText($"/proc/{other.Id}/cmdline").StartsWith("/bin/sleep\0", StringComparison.Ordinal),
                "the child has exec'd sleep", TimeSpan.FromSeconds(10), ct: TestContext.Current.CancellationToken);
            Assert.True(ProgramRunner.Runs(other.Id, "sleep", "29.5"));
            Assert.False(ProgramRunner.Runs(other.Id, "sleep", "30"));
            Assert.False(ProgramRunner.Runs(other.Id, "keepalived", "29.5"));
        }
        finally
        {
            other.Kill();
            other.WaitForExit(TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public async Task RunAsync_InANamedNamespace_RunsThere()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("runner");

        var result = await ProgramRunner.RunAsync(new ProgramCommand("readlink", ["/proc/self/ns/net"]) { NetworkNamespace = ns.Name }, input: null, TestContext.Current.CancellationToken);

        Assert.Equal(0, result.ExitCode);
        Assert.Equal(ns.Link, result.Output.Trim());
    }
}
