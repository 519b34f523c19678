using System.Globalization;

namespace Merlin.Model;

/// <summary>A flag's value that is wrong; the message starts with the flag's name.</summary>
public sealed class OptionValueException(string message) : Exception(message);

/// <summary>Values a person types into flags, read with their bounds: the command lines of the agent and the
/// Kubernetes controller share these, so the same mistake reads the same everywhere.</summary>
public static class OptionValues
{
    /// <summary>A duration (<c>2s</c>, <c>500ms</c>, <c>5m</c>) of at least <paramref name="min"/>; <paramref name="fallback"/> when absent.</summary>
    public static TimeSpan Duration(string? text, string option, TimeSpan fallback, TimeSpan min)
    {
        if (text is null) return fallback;
        if (!Durations.TryParse(text, out var value, out var error)) throw new OptionValueException($"{option}: {error}");
        if (value < min) throw new OptionValueException($"{option}: {Durations.Format(value)} is less than {Durations.Format(min)}");
        return value;
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
