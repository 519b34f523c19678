using System.Diagnostics;
using System.Text;

namespace Merlin.Lab;

/// <summary>What a finished command printed and returned.</summary>
public sealed record LabCommandResult(IReadOnlyList<string> Arguments, int ExitCode, string StandardOutput, string StandardError, TimeSpan Elapsed)
{
    public bool Succeeded => ExitCode == 0;

    public string CommandLine => string.Join(' ', Arguments.Select(Quote));

    /// <summary>Throws <see cref="LabCommandException"/> unless the exit code is 0.</summary>
    public LabCommandResult EnsureSuccess() => Succeeded ? this : throw new LabCommandException(this);

    public override string ToString() =>
        $"`{CommandLine}` exited {ExitCode} after {Elapsed.TotalMilliseconds:0} ms" +
        (StandardOutput.Length > 0 ? $"\nstdout:\n{Tail(StandardOutput)}" : "") +
        (StandardError.Length > 0 ? $"\nstderr:\n{Tail(StandardError)}" : "");

    internal static string Quote(string a) =>
        a.Length > 0 && a.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=@,+%[]".Contains(c)) ? a : "'" + a.Replace("'", "'\\''") + "'";

    internal static string Tail(string s, int max = 4000) => s.Length <= max ? s.TrimEnd() : "…" + s[^max..].TrimEnd();
}

/// <summary>A lab command exited with a non-zero code; the message carries its command line and output.</summary>
public sealed class LabCommandException(LabCommandResult result) : Exception(result.ToString())
{
    public LabCommandResult Result { get; } = result;
}

/// <summary>Runs a program to completion with a timeout, capturing its output; on timeout kills it and its children by PID.</summary>
internal static class LabCommand
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    public static async Task<LabCommandResult> RunAsync(IReadOnlyList<string> argv, string? stdin = null, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        if (argv.Count == 0) throw new ArgumentException("empty command", nameof(argv));
        var limit = timeout ?? DefaultTimeout;
        var psi = new ProcessStartInfo(argv[0])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in argv.Skip(1)) psi.ArgumentList.Add(a);
        using var process = new Process { StartInfo = psi };
        var clock = Stopwatch.StartNew();
        process.Start();
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var pumps = Task.WhenAll(Pump(process.StandardOutput, stdout), Pump(process.StandardError, stderr));
        try
        {
            if (stdin is not null) await process.StandardInput.WriteAsync(stdin.AsMemory(), ct);
            process.StandardInput.Close();
        }
        catch (IOException)
        {
            // It exited without reading its input; its exit code tells the rest.
        }

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(limit);
        try
        {
            await process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            KillTree(process);
            await process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            await pumps.WaitAsync(TimeSpan.FromSeconds(1), CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            ct.ThrowIfCancellationRequested();
            var partial = new LabCommandResult(argv, -1, Snapshot(stdout), Snapshot(stderr), clock.Elapsed);
            throw new TimeoutException($"`{partial.CommandLine}` did not finish within {limit.TotalSeconds:0.###} s and was killed\n{partial}");
        }
        // A child that outlives the command may hold its output open: do not wait for that forever.
        await pumps.WaitAsync(TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        return new LabCommandResult(argv, process.ExitCode, Snapshot(stdout), Snapshot(stderr), clock.Elapsed);
    }

    internal static void KillTree(Process process)
    {
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Already gone.
        }
    }

    private static async Task Pump(StreamReader reader, StringBuilder into)
    {
        var buf = new char[4096];
        int n;
        while ((n = await reader.ReadAsync(buf.AsMemory())) > 0)
        {
            lock (into) into.Append(buf, 0, n);
        }
    }

    private static string Snapshot(StringBuilder sb)
    {
        lock (sb) return sb.ToString();
    }
}
