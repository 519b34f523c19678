using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using k8s;
using k8s.Models;
using Merlin.Kubernetes.Mapping;

namespace Merlin.Kubernetes.Bench;

/// <summary>Watches the Services of namespace default through the official client (its own connection) and notes,
/// per Service, the first moment its status shows an ingress address and the first moment our condition is True
/// (Merlin programmed). A watch the server ends is reopened from the last resourceVersion.</summary>
public sealed class StatusWatch : IAsyncDisposable
{
    private readonly k8s.Kubernetes _kube;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;
    private readonly TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ConcurrentDictionary<string, long> Ingress { get; } = new(StringComparer.Ordinal);
    public ConcurrentDictionary<string, long> Ready { get; } = new(StringComparer.Ordinal);

    public StatusWatch(KubernetesClientConfiguration config)
    {
        _kube = new k8s.Kubernetes(config);
        _run = Task.Run(RunAsync);
    }

    public Task Opened => _open.Task;

    private async Task RunAsync()
    {
        string? rv = null;
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                if (rv is null)
                {
                    var list = await _kube.CoreV1.ListNamespacedServiceAsync("default", cancellationToken: _stop.Token);
                    foreach (var s in list.Items) Note(s);
                    rv = list.Metadata.ResourceVersion;
                }
                _open.TrySetResult();
                Exception? failure = null;
                await foreach (var (type, svc) in _kube.CoreV1.WatchListNamespacedServiceAsync("default", resourceVersion: rv, allowWatchBookmarks: true,
                                   timeoutSeconds: 600, onError: e => failure = e, cancellationToken: _stop.Token))
                {
                    if (svc?.Metadata?.ResourceVersion is { Length: > 0 } v) rv = v;
                    if (type is WatchEventType.Added or WatchEventType.Modified) Note(svc!);
                }
                if (failure is not null) rv = null; // 410 or a broken stream: list again
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested) { return; }
            catch (Exception)
            {
                rv = null;
                try { await Task.Delay(100, _stop.Token); } catch (OperationCanceledException) { return; }
            }
        }
    }

    private void Note(V1Service svc)
    {
        var now = Stopwatch.GetTimestamp();
        var name = svc.Metadata.Name;
        if (svc.Status?.LoadBalancer?.Ingress is { Count: > 0 } i && !string.IsNullOrEmpty(i[0].Ip)) Ingress.TryAdd(name, now);
        if (svc.Status?.Conditions?.Any(c => c.Type == Annotations.ConditionType && c.Status == "True") == true) Ready.TryAdd(name, now);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        try { await _run.WaitAsync(TimeSpan.FromSeconds(10)); } catch { /* stopping */ }
        _kube.Dispose();
        _stop.Dispose();
    }
}

public static class Util
{
    public static string LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "?"; }
    }

    /// <summary>Resident set size and its peak of a process, from /proc (bytes).</summary>
    public static (long Rss, long Peak) Memory(int pid)
    {
        long rss = 0, peak = 0;
        foreach (var l in File.ReadAllLines($"/proc/{pid}/status"))
        {
            if (l.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kb(l);
            else if (l.StartsWith("VmHWM:", StringComparison.Ordinal)) peak = Kb(l);
        }
        return (rss, peak);
        static long Kb(string l) => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    /// <summary>A process's resident memory split into anonymous (heaps, stacks), file-backed (mapped binaries, shared
    /// with other processes that map them) and shared-memory (the runtime's double-mapped JIT code under W^X) parts,
    /// from /proc (bytes).</summary>
    public static (long Anon, long File, long Shmem) ResidentParts(int pid)
    {
        long anon = 0, file = 0, shmem = 0;
        foreach (var l in File.ReadAllLines($"/proc/{pid}/status"))
        {
            if (l.StartsWith("RssAnon:", StringComparison.Ordinal)) anon = Kb(l);
            else if (l.StartsWith("RssFile:", StringComparison.Ordinal)) file = Kb(l);
            else if (l.StartsWith("RssShmem:", StringComparison.Ordinal)) shmem = Kb(l);
        }
        return (anon, file, shmem);
        static long Kb(string l) => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    /// <summary>User + system CPU of a process so far, from /proc/&lt;pid&gt;/stat (seconds).</summary>
    public static double CpuSeconds(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks / 100.0; // USER_HZ is 100 on Linux
    }

    public static double Mib(long bytes) => bytes / 1024.0 / 1024.0;

    /// <summary>Nearest-rank quantile of a sorted list.</summary>
    public static double Quantile(IReadOnlyList<double> sorted, double q) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Count) - 1, 0, sorted.Count - 1)];

    public static double Ms(long from, long to) => Stopwatch.GetElapsedTime(from, to).TotalMilliseconds;

    /// <summary>Polls until <paramref name="done"/> or the deadline; returns the moment it was seen true, or null.</summary>
    public static async Task<long?> UntilAsync(Func<bool> done, TimeSpan limit, CancellationToken ct, int pollMs = 10)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < limit)
        {
            if (done()) return Stopwatch.GetTimestamp();
            await Task.Delay(pollMs, ct);
        }
        return done() ? Stopwatch.GetTimestamp() : null;
    }

    public static async Task<long?> UntilAsync(Func<Task<bool>> done, TimeSpan limit, CancellationToken ct, int pollMs = 10)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < limit)
        {
            if (await done()) return Stopwatch.GetTimestamp();
            await Task.Delay(pollMs, ct);
        }
        return null;
    }

    public static string F(double v, int decimals = 0) =>
        double.IsNaN(v) ? "n/a" : v.ToString("N" + decimals.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
}
