namespace Merlin.Api;

/// <summary>
/// At most one log line per <see cref="Interval"/> for a kind of event any caller can cause at will (a refused
/// call, a malformed body), so no caller can fill the disk; the next line that is written says how many were
/// left out since the last one.
/// </summary>
public sealed class RateLimitedLog(TimeProvider time, TimeSpan interval)
{
    /// <summary>The interval the API uses for the lines callers can cause.</summary>
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromSeconds(10);

    private readonly Lock _lock = new();
    private long _next = long.MinValue;
    private long _suppressed;

    public TimeSpan Interval => interval;

    /// <summary>True when a line may be written now; <paramref name="suppressed"/> is how many were not since the last one.</summary>
    public bool TryEnter(out long suppressed)
    {
        var now = time.GetTimestamp();
        lock (_lock)
        {
            if (now < _next)
            {
                _suppressed++;
                suppressed = 0;
                return false;
            }
            _next = now + (long)(interval.TotalSeconds * time.TimestampFrequency);
            suppressed = _suppressed;
            _suppressed = 0;
            return true;
        }
    }
}
