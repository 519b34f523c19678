using System.Diagnostics;

namespace Merlin.Linux;

/// <summary>A child started by <see cref="ProgramRunner.Start"/>: its PID, its exit, and stopping it by PID.</summary>
public sealed class RunningProgram : IDisposable
{
    private readonly Process _process;

    internal RunningProgram(Process process)
    {
        _process = process;
        Pid = process.Id;
        Exited = process.WaitForExitAsync(CancellationToken.None);
    }

    public int Pid { get; }

    /// <summary>Completes when the child has exited (and its output was read to the end).</summary>
    public Task Exited { get; }

    public bool HasExited => _process.HasExited;

    /// <summary>The exit code, once <see cref="Exited"/> completed.</summary>
    public int ExitCode => _process.ExitCode;

    /// <summary>SIGTERM, then SIGKILL if it is still running after <paramref name="wait"/>; true when it stopped on SIGTERM.</summary>
    public async Task<bool> StopAsync(TimeSpan wait, CancellationToken ct)
    {
        if (_process.HasExited) return true;
        ProcessSignal.Send(Pid, ProcessSignal.Terminate);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(wait);
        try
        {
            await Exited.WaitAsync(limit.Token);
            return true;
        }
        catch (OperationCanceledException)
        {
            ProcessSignal.Send(Pid, ProcessSignal.Kill);
            return false;
        }
    }

    /// <summary>SIGKILL and wait for the exit (a child that no longer answers).</summary>
    public async Task KillAsync()
    {
        if (_process.HasExited) return;
        ProcessSignal.Send(Pid, ProcessSignal.Kill);
        await Exited;
    }

    public void Dispose() => _process.Dispose();
}
