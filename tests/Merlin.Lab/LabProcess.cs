using System.Diagnostics;
using System.Text;

namespace Merlin.Lab;

/// <summary>Extra settings for <see cref="LabHost.Start(IEnumerable{string}, LabProcessOptions?)"/>.</summary>
public sealed record LabProcessOptions
{
    /// <summary>Variables added to (or, with a null value, removed from) the inherited environment.</summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    public string? WorkingDirectory { get; init; }

    /// <summary>Lines kept per process (older ones are dropped).</summary>
    public int MaxLines { get; init; } = 20_000;
}

/// <summary>
/// A process running inside a lab namespace (started through <c>ip netns exec</c>, which execs it, so
/// <see cref="Pid"/> is the program itself). Its output is captured line by line. Disposing it kills it
/// and its children by PID; the lab also disposes every process it started when it is torn down, and its
/// stdin is a pipe held by the test process, so a program that watches stdin (the lab server does)
/// stops by itself if the test process dies.
/// </summary>
public sealed class LabProcess : IAsyncDisposable, IDisposable
{
    private readonly Process _process;
    private readonly object _gate = new();
    private readonly List<(bool IsError, string Line)> _lines = [];
    private readonly int _maxLines;
    private readonly Task _pumps;
    private readonly Action<LabProcess>? _onDispose;
    private int _dropped;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _disposed;

    internal LabProcess(LabHost host, IReadOnlyList<string> argv, LabProcessOptions? options, Action<LabProcess>? onDispose)
    {
        Host = host;
        Arguments = argv;
        _onDispose = onDispose;
        _maxLines = Math.Max(100, options?.MaxLines ?? 20_000);
        var psi = new ProcessStartInfo("ip")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = options?.WorkingDirectory ?? "",
        };
        foreach (var a in new[] { "netns", "exec", host.Namespace }.Concat(argv)) psi.ArgumentList.Add(a);
        if (options?.Environment is { } env)
        {
            foreach (var (k, v) in env)
            {
                if (v is null) psi.Environment.Remove(k);
                else psi.Environment[k] = v;
            }
        }
        _process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        _process.Exited += (_, _) => Signal();
        _process.Start();
        Pid = _process.Id;
        StartedAt = DateTimeOffset.UtcNow;
        _pumps = Task.WhenAll(Pump(_process.StandardOutput, false), Pump(_process.StandardError, true));
    }

    public LabHost Host { get; }

    /// <summary>The program and its arguments (without the <c>ip netns exec NS</c> in front).</summary>
    public IReadOnlyList<string> Arguments { get; }

    public int Pid { get; }

    public DateTimeOffset StartedAt { get; }

    public bool HasExited => _process.HasExited;

    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

    /// <summary>How many lines (stdout and stderr) it printed so far, including dropped ones; pass it to
    /// <see cref="WaitForLineAsync"/> as <c>fromLine</c> to wait only for lines printed after now.</summary>
    public int LineCount
    {
        get
        {
            lock (_gate) return _dropped + _lines.Count;
        }
    }

    /// <summary>The lines (stdout and stderr) printed at or after line <paramref name="fromLine"/> that are still kept.</summary>
    public IReadOnlyList<string> LinesSince(int fromLine)
    {
        lock (_gate) return _lines.Skip(Math.Max(0, fromLine - _dropped)).Select(l => l.Line).ToList();
    }

    public string StandardOutput => Join(isError: false);

    public string StandardError => Join(isError: true);

    /// <summary>Everything kept, stdout and stderr interleaved as read (stderr lines marked "!").</summary>
    public string Output
    {
        get
        {
            lock (_gate) return string.Join('\n', _lines.Select(l => (l.IsError ? "! " : "") + l.Line));
        }
    }

    /// <summary>
    /// Waits for a line (stdout or stderr) matching <paramref name="match"/>, printed at or after line
    /// <paramref name="fromLine"/>, and returns it. Throws <see cref="TimeoutException"/> (with the output so
    /// far) when none comes in time, and <see cref="InvalidOperationException"/> when the process ends first.
    /// </summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, int fromLine = 0, CancellationToken ct = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        var next = fromLine;
        while (true)
        {
            Task changed;
            bool ended;
            lock (_gate)
            {
                for (var i = Math.Max(next, _dropped); i < _dropped + _lines.Count; i++)
                {
                    if (match(_lines[i - _dropped].Line)) return _lines[i - _dropped].Line;
                }
                next = _dropped + _lines.Count;
                changed = _changed.Task;
                ended = _process.HasExited && _pumps.IsCompleted;
            }
            if (ended) throw new InvalidOperationException($"{this} exited with code {_process.ExitCode} before printing the expected line\n{LabCommandResult.Tail(Output)}");
            try
            {
                await changed.WaitAsync(deadline.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new TimeoutException($"{this} printed no expected line within {timeout.TotalSeconds:0.###} s\n{LabCommandResult.Tail(Output)}");
            }
        }
    }

    /// <summary>Waits for the process to exit (and its output to be read); throws <see cref="TimeoutException"/> if it does not in time.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout, CancellationToken ct = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        try
        {
            await _process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException($"{this} did not exit within {timeout.TotalSeconds:0.###} s\n{LabCommandResult.Tail(Output)}");
        }
        await _pumps.WaitAsync(TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        return _process.ExitCode;
    }

    /// <summary>Sends a signal (see <see cref="Merlin.Lab.Signal"/>) to this process by its PID; false if it is gone.</summary>
    public bool SendSignal(int signal) => !HasExited && Merlin.Lab.Signal.Send(Pid, signal);

    /// <summary>SIGTERM, then after <paramref name="grace"/> SIGKILL to it and its children; returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan? grace = null)
    {
        if (!HasExited)
        {
            SendSignal(Merlin.Lab.Signal.Term);
            try
            {
                return await WaitForExitAsync(grace ?? TimeSpan.FromSeconds(5));
            }
            catch (TimeoutException)
            {
                // Next: kill.
            }
        }
        return await KillAsync();
    }

    /// <summary>SIGKILL to it and its children (by PID), then waits for it; returns the exit code.</summary>
    public async Task<int> KillAsync()
    {
        LabCommand.KillTree(_process);
        return await WaitForExitAsync(TimeSpan.FromSeconds(10));
    }

    /// <summary>Closes its stdin (a lab server started with --exit-on-stdin-eof then stops by itself).</summary>
    public void CloseStandardInput()
    {
        try
        {
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
            // Already closed.
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        try
        {
            await KillAsync();
        }
        catch (TimeoutException)
        {
            // Reported by the lab's teardown, which kills whatever is left in its namespaces.
        }
        CloseStandardInput();
        _process.Dispose();
        _onDispose?.Invoke(this);
    }

    public void Dispose() => Task.Run(() => DisposeAsync().AsTask()).GetAwaiter().GetResult();

    public override string ToString() =>
        $"[{Host.Name} pid {Pid}] {string.Join(' ', Arguments.Take(6).Select(LabCommandResult.Quote))}{(Arguments.Count > 6 ? " …" : "")}";

    private string Join(bool isError)
    {
        lock (_gate) return string.Join('\n', _lines.Where(l => l.IsError == isError).Select(l => l.Line));
    }

    private async Task Pump(StreamReader reader, bool isError)
    {
        try
        {
            while (await reader.ReadLineAsync() is { } line)
            {
                lock (_gate)
                {
                    _lines.Add((isError, line));
                    if (_lines.Count > _maxLines)
                    {
                        var drop = _lines.Count - _maxLines;
                        _lines.RemoveRange(0, drop);
                        _dropped += drop;
                    }
                }
                Signal();
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // Stream closed under us.
        }
        Signal();
    }

    private void Signal()
    {
        TaskCompletionSource old;
        lock (_gate)
        {
            old = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }
}
