namespace Merlin.Model;

/// <summary>
/// Exponential backoff with jitter: the one retry delay of every loop in Merlin that retries (reconcile
/// passes, the store watch, drain expiry, the agent's API calls, the announcer engines, the Kubernetes
/// caches). The first delay is <see cref="Initial"/>; each next one doubles, up to <see cref="Max"/>;
/// <see cref="Reset"/> starts over after a success. Each delay is shortened by a random share of up to
/// <see cref="Jitter"/> of itself, so nodes that failed together do not retry in step — and never made
/// longer, so a test that advances a fake clock by the nominal delay always reaches the retry.
/// </summary>
/// <remarks>
/// Here, in the model, because it is pure (no clock, no I/O; the randomness is injected) and the model is the
/// one project every retrying project already references or may reference without pulling anything in.
/// One instance per loop: it is not thread-safe.
/// </remarks>
public sealed class Backoff
{
    /// <summary>Up to a fifth of each delay is random.</summary>
    public const double DefaultJitter = 0.2;

    private readonly Random _random;

    public Backoff(TimeSpan initial, TimeSpan max, double jitter = DefaultJitter, Random? random = null)
    {
        if (initial <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(initial), initial, "the first delay must be positive");
        if (max < initial) throw new ArgumentOutOfRangeException(nameof(max), max, $"the longest delay must be at least the first ({initial})");
        if (jitter is < 0 or >= 1 || double.IsNaN(jitter)) throw new ArgumentOutOfRangeException(nameof(jitter), jitter, "the random share must be at least 0 and less than 1");
        Initial = initial;
        Max = max;
        Jitter = jitter;
        Nominal = initial;
        _random = random ?? Random.Shared;
    }

    public TimeSpan Initial { get; }

    public TimeSpan Max { get; }

    public double Jitter { get; }

    /// <summary>The delay the next <see cref="Next"/> returns before jitter: <see cref="Initial"/> doubled once per failure since the last reset, at most <see cref="Max"/>.</summary>
    public TimeSpan Nominal { get; private set; }

    /// <summary>Delays handed out since the last <see cref="Reset"/>.</summary>
    public int Failures { get; private set; }

    /// <summary>The delay before the next attempt, in [<see cref="Nominal"/> × (1 − <see cref="Jitter"/>), <see cref="Nominal"/>]; the next nominal one doubles.</summary>
    public TimeSpan Next()
    {
        var nominal = Nominal;
        Nominal = nominal.Ticks > Max.Ticks / 2 ? Max : nominal * 2;
        Failures++;
        return Jitter == 0 ? nominal : TimeSpan.FromTicks(nominal.Ticks - (long)(nominal.Ticks * Jitter * _random.NextDouble()));
    }

    /// <summary>After a success: the next delay is <see cref="Initial"/> again.</summary>
    public void Reset()
    {
        Nominal = Initial;
        Failures = 0;
    }
}
