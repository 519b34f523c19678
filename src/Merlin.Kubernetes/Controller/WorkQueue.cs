using Microsoft.Extensions.Logging;

namespace Merlin.Kubernetes.Controller;

/// <summary>A de-duplicating queue of keys with a few workers, as Kubernetes controllers have: a key queued many times
/// before a worker takes it is handled once; a key is never handled by two workers at once (queued again while being
/// handled, it runs once more afterwards); a failed key is retried with a growing delay.</summary>
public sealed class WorkQueue(Func<string, CancellationToken, Task> handle, int workers, TimeProvider time, ILogger log)
{
    private readonly object _gate = new();
    private readonly LinkedList<string> _ready = new();
    private readonly HashSet<string> _queued = new(StringComparer.Ordinal);
    private readonly HashSet<string> _busy = new(StringComparer.Ordinal);
    private readonly HashSet<string> _again = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _failures = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _signal = new(0);
    private TaskCompletionSource _idle = NewIdle();

    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);

    public int Depth { get { lock (_gate) return _queued.Count + _busy.Count; } }
    public long Handled { get; private set; }
    public long Failed { get; private set; }

    public void Add(string key)
    {
        lock (_gate)
        {
            if (_busy.Contains(key)) { _again.Add(key); return; }
            if (!_queued.Add(key)) return;
            _ready.AddLast(key);
            if (_idle.Task.IsCompleted) _idle = NewIdle();
        }
        _signal.Release();
    }

    public void AddAfter(string key, TimeSpan delay, CancellationToken ct) =>
        _ = Task.Delay(delay, time, ct).ContinueWith(t => { if (!t.IsCanceled) Add(key); }, TaskScheduler.Default);

    /// <summary>Completes when nothing is queued or being handled (failed keys waiting for their retry do not count).</summary>
    public Task WaitIdleAsync(CancellationToken ct)
    {
        lock (_gate) return (_queued.Count + _busy.Count == 0 ? Task.CompletedTask : _idle.Task).WaitAsync(ct);
    }

    public Task RunAsync(CancellationToken ct) => Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(() => WorkAsync(ct), ct)));

    private async Task WorkAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try { await _signal.WaitAsync(ct); } catch (OperationCanceledException) { return; }
            string key;
            lock (_gate)
            {
                if (_ready.First is not { } first) continue;
                key = first.Value;
                _ready.RemoveFirst();
                _queued.Remove(key);
                _busy.Add(key);
            }
            var failed = false;
            try
            {
                await handle(key, ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                failed = true;
                log.LogDebug(e, "{Key}: handling failed", key);
            }
            TimeSpan? retry = null;
            lock (_gate)
            {
                Handled++;
                _busy.Remove(key);
                if (failed)
                {
                    Failed++;
                    var n = _failures[key] = _failures.GetValueOrDefault(key) + 1;
                    retry = TimeSpan.FromTicks(Math.Min(TimeSpan.FromMilliseconds(100).Ticks << Math.Min(n - 1, 20), MaxBackoff.Ticks));
                }
                else
                {
                    _failures.Remove(key);
                }
            }
            var again = false;
            lock (_gate) again = _again.Remove(key);
            if (again) Add(key);
            else if (retry is { } delay) AddAfter(key, delay, ct);
            lock (_gate) if (_queued.Count + _busy.Count == 0) _idle.TrySetResult();
        }
    }

    private static TaskCompletionSource NewIdle() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
