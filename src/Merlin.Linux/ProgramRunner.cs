using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Merlin.Linux;

/// <summary>A program and its arguments, started directly (never through a shell), in the caller's network namespace or a named one.</summary>
public sealed record ProgramCommand(string Program, IReadOnlyList<string> Arguments)
{
    /// <summary>A named network namespace (<c>/run/netns/NAME</c>) to run the program in; null for this process's own.</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>iproute2's <c>ip</c>, which enters <see cref="NetworkNamespace"/> (see <see cref="ProgramRunner"/>).</summary>
    public string IpPath { get; init; } = "ip";

    public override string ToString() =>
        (NetworkNamespace is { } ns ? $"[netns {ns}] " : "") + string.Join(' ', Arguments.Prepend(Program));
}

/// <summary>How a program that ran to its end ended: its exit code and everything it wrote.</summary>
public sealed record ProgramResult(int ExitCode, string Output, string Error);

/// <summary>
/// The one way Merlin starts another program: the engines that stay processes (keepalived, gobgpd) and the
/// nft CLI when libnftables cannot be loaded. Arguments go to the program as a list, never through a shell.
/// </summary>
/// <remarks>
/// A program for a named network namespace starts as <c>ip netns exec NAME PROGRAM ARGS…</c>, the only
/// <c>ip</c> process left: ip execs the program (same PID, so stopping by PID reaches the program), and sets up
/// what a program in a named namespace expects (<c>/etc/netns/NAME</c> bound over <c>/etc</c>, a <c>/sys</c>
/// of that namespace). Entering the namespace here instead would mean setns(2) on the thread that forks, and
/// <see cref="Process.Start()"/> runs managed code on it, during which the runtime may start threads that
/// inherit the namespace — what <see cref="NetworkNamespace"/>'s native-only windows exist to prevent.
/// keepalived enters its namespace itself (<c>-s NAME</c>) and needs no wrapper.
/// </remarks>
public static partial class ProgramRunner
{
    /// <summary>How long SIGTERM has before SIGKILL, unless the caller says otherwise.</summary>
    public static readonly TimeSpan StopWait = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Runs <paramref name="command"/> to its end, with standard input written by <paramref name="writeInput"/>
    /// (on a pool thread while the program runs; null: no input); collects its output. Cancelling kills it.
    /// </summary>
    /// <exception cref="System.ComponentModel.Win32Exception">The program (or ip) cannot be started.</exception>
    public static async Task<ProgramResult> RunAsync(ProgramCommand command, Action<Stream>? writeInput, CancellationToken ct)
    {
        using var process = Process.Start(StartInfo(command, redirectInput: writeInput is not null))
            ?? throw new InvalidOperationException($"could not start {command.Program}");
        var output = process.StandardOutput.ReadToEndAsync(ct);
        var error = process.StandardError.ReadToEndAsync(ct);
        try
        {
            if (writeInput is not null)
            {
                // Written on a pool thread, so stdout and stderr keep being drained meanwhile.
                var stdin = process.StandardInput.BaseStream;
                await Task.Run(() =>
                {
                    try { writeInput(stdin); }
                    finally { stdin.Dispose(); }
                }, ct);
            }
            await process.WaitForExitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            throw;
        }
        catch (IOException) when (writeInput is not null)
        {
            // The program exited before it read all of its input (nft on a parse error): its stderr says why.
            // (The broken pipe can be seen a moment before the exit is.)
            await process.WaitForExitAsync(ct);
            if (process.ExitCode == 0) throw;
        }
        return new ProgramResult(process.ExitCode, await output, await error);
    }

    /// <summary>As the other overload, with <paramref name="input"/> (UTF-8) as standard input.</summary>
    public static Task<ProgramResult> RunAsync(ProgramCommand command, string? input, CancellationToken ct) =>
        RunAsync(command, input is null ? null : stdin => stdin.Write(new UTF8Encoding(false).GetBytes(input)), ct);

    /// <summary>
    /// Starts <paramref name="command"/> as a long-lived child: standard input closed, every line it writes to
    /// stdout or stderr logged to <paramref name="output"/> at Information.
    /// </summary>
    /// <exception cref="System.ComponentModel.Win32Exception">The program (or ip) cannot be started.</exception>
    public static RunningProgram Start(ProgramCommand command, ILogger output)
    {
        var process = new Process { StartInfo = StartInfo(command, redirectInput: true) };
        process.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 } line) LogLine(output, line); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 } line) LogLine(output, line); };
        try
        {
            process.Start();
        }
        catch
        {
            process.Dispose();
            throw;
        }
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return new RunningProgram(process);
    }

    /// <summary>
    /// Stops a process that is not our child (one a previous daemon left running) by PID: SIGTERM, then SIGKILL
    /// if it is still alive after <paramref name="wait"/>. Its exit is seen by polling /proc.
    /// </summary>
    /// <returns>True when it stopped on SIGTERM.</returns>
    public static async Task<bool> StopAsync(int pid, TimeSpan wait, CancellationToken ct)
    {
        ProcessSignal.Send(pid, ProcessSignal.Terminate);
        if (await WaitGoneAsync(pid, wait, ct)) return true;
        ProcessSignal.Send(pid, ProcessSignal.Kill);
        await WaitGoneAsync(pid, TimeSpan.FromSeconds(1), ct);
        return false;
    }

    /// <summary>True when <paramref name="pid"/> has exited and waits for its parent to collect it.</summary>
    public static bool IsZombie(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var end = stat.LastIndexOf(')');
            return end > 0 && end + 2 < stat.Length && stat[end + 2] is 'Z' or 'X';
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>True when <paramref name="pid"/> runs <paramref name="program"/> (by name or path) with <paramref name="argument"/> among its arguments.</summary>
    public static bool Runs(int pid, string program, string argument)
    {
        try
        {
            var args = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
            return args.Any(a => a == program || a.EndsWith("/" + program, StringComparison.Ordinal)) && args.Contains(argument);
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>True when <paramref name="pid"/> is gone (or a zombie) within <paramref name="wait"/>.</summary>
    private static async Task<bool> WaitGoneAsync(int pid, TimeSpan wait, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (!ProcessSignal.IsAlive(pid) || IsZombie(pid)) return true;
            if (clock.Elapsed >= wait) return false;
            await Task.Delay(TimeSpan.FromMilliseconds(20), ct);
        }
    }

    private static ProcessStartInfo StartInfo(ProgramCommand command, bool redirectInput)
    {
        var start = new ProcessStartInfo
        {
            UseShellExecute = false,
            RedirectStandardInput = redirectInput,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        if (command.NetworkNamespace is { } ns)
        {
            start.FileName = command.IpPath;
            foreach (var a in new[] { "netns", "exec", ns, command.Program }) start.ArgumentList.Add(a);
        }
        else
        {
            start.FileName = command.Program;
        }
        foreach (var a in command.Arguments) start.ArgumentList.Add(a);
        return start;
    }

    [LoggerMessage(EventId = 9301, Level = LogLevel.Information, Message = "{Line}")]
    private static partial void LogLine(ILogger logger, string line);
}
