using System.Diagnostics;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Where a dataplane's time went, by phase (build, render, nft, read-back, neighbours…), summed
/// since the last <see cref="Take"/>: the benchmark prints it, so a slow pass says what was slow.
/// </summary>
internal sealed class Phases
{
    private readonly Dictionary<string, double> _seconds = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

    public Scope Measure(string phase) => new(this, phase, Stopwatch.GetTimestamp());

    public void Add(string phase, double seconds)
    {
        lock (_lock) _seconds[phase] = _seconds.GetValueOrDefault(phase) + seconds;
    }

    /// <summary>The phases since the last call, in milliseconds, and a reset.</summary>
    public IReadOnlyDictionary<string, double> Take()
    {
        lock (_lock)
        {
            var result = _seconds.ToDictionary(kv => kv.Key, kv => kv.Value * 1000, StringComparer.Ordinal);
            _seconds.Clear();
            return result;
        }
    }

    public readonly struct Scope(Phases phases, string phase, long started) : IDisposable
    {
        public void Dispose() => phases.Add(phase, Stopwatch.GetElapsedTime(started).TotalSeconds);
    }
}
