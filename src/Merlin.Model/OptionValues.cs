using System.Globalization;

namespace Merlin.Model;

/// <summary>A flag's value that is wrong; the message starts with the flag's name.</summary>
public sealed class OptionValueException(string message) : Exception(message);

/// <summary>Values a person types into flags, read with their bounds: the command lines of the agent and the
/// Kubernetes controller share these, so the same mistake reads the same everywhere.</summary>
public static class OptionValues
{
    /// <summary>A duration (<c>2s</c>, <c>500ms</c>, <c>5m</c>) of at least <paramref name="min"/> and at most
    /// <paramref name="max"/> (if given); <paramref name="fallback"/> when absent.</summary>
    public static TimeSpan Duration(string? text, string option, TimeSpan fallback, TimeSpan min, TimeSpan? max = null)
    {
        if (text is null) return fallback;
        if (!Durations.TryParse(text, out var value, out var error)) throw new OptionValueException($"{option}: {error}");
        if (value < min) throw new OptionValueException($"{option}: {Durations.Format(value)} is less than {Durations.Format(min)}");
        if (value > max) throw new OptionValueException($"{option}: {Durations.Format(value)} is more than {Durations.Format(max.Value)}");
        return value;
    }

    /// <summary>A health check's period and timeout from their flags, within the bounds the API enforces
    /// (<see cref="Validation.HealthTiming"/>), so a mistake is named by its flag before anything is registered.</summary>
    public static (TimeSpan Period, TimeSpan Timeout) HealthTiming(string? period, string periodOption, string? timeout, string timeoutOption)
    {
        var p = Duration(period, periodOption, TimeSpan.FromSeconds(2), Validation.MinHealthPeriod, Validation.MaxHealthPeriod);
        // Unset, the timeout is 1 s or the period if that is shorter: a short period alone is not a mistake.
        var t = Duration(timeout, timeoutOption, p < TimeSpan.FromSeconds(1) ? p : TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(10));
        if (t > p) throw new OptionValueException($"{timeoutOption}: {Durations.Format(t)} is longer than {periodOption} {Durations.Format(p)}");
        return (p, t);
    }

    /// <summary>A whole number from <paramref name="min"/> to <paramref name="max"/>; <paramref name="fallback"/> when absent.</summary>
    public static uint UInt(string? text, string option, uint fallback, uint min, uint max)
    {
        if (text is null) return fallback;
        if (!uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < min || value > max)
            throw new OptionValueException($"{option}: {Validation.Quote(text)} is not a whole number from {min} to {max}");
        return value;
    }
}
