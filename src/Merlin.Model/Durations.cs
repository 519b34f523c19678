using System.Globalization;
using System.Text;

namespace Merlin.Model;

/// <summary>
/// Durations as operators write them (and as the original merlin's Go flags did): a number and a unit,
/// repeatable — <c>500ms</c>, <c>10s</c>, <c>1m</c>, <c>1h30m</c>, <c>1.5s</c>.
/// </summary>
public static class Durations
{
    public const string Hint = "use a number and a unit, e.g. 500ms, 10s, 1m, 1h30m";

    public static bool TryParse(string text, out TimeSpan value, out string? error)
    {
        value = TimeSpan.Zero;
        error = null;
        var s = text.Trim();
        if (s.Length == 0)
        {
            error = $"empty duration ({Hint})";
            return false;
        }
        decimal totalMs = 0;
        var i = 0;
        while (i < s.Length)
        {
            var start = i;
            while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.')) i++;
            if (i == start || !decimal.TryParse(s[start..i], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number))
            {
                error = $"{Validation.Quote(text)} is not a duration ({Hint})";
                return false;
            }
            var unitStart = i;
            while (i < s.Length && char.IsAsciiLetter(s[i])) i++;
            decimal? unitMs = s[unitStart..i] switch
            {
                "ms" => 1m,
                "s" => 1_000m,
                "m" => 60_000m,
                "h" => 3_600_000m,
                _ => null,
            };
            if (unitMs is null)
            {
                error = unitStart == i
                    ? $"{Validation.Quote(text)} needs a unit ({Hint})"
                    : $"{Validation.Quote(s[unitStart..i])} in {Validation.Quote(text)} is not a unit (ms, s, m or h)";
                return false;
            }
            totalMs += number * unitMs.Value;
            if (totalMs > (decimal)TimeSpan.MaxValue.TotalMilliseconds / 2)
            {
                error = $"{Validation.Quote(text)} is too long";
                return false;
            }
        }
        value = TimeSpan.FromTicks((long)(totalMs * TimeSpan.TicksPerMillisecond));
        return true;
    }

    /// <summary>The shortest form that parses back to the same value: <c>10s</c>, <c>1m30s</c>, <c>250ms</c>, <c>1.5s</c>.</summary>
    public static string Format(TimeSpan value)
    {
        if (value == TimeSpan.Zero) return "0s";
        if (value < TimeSpan.Zero) return "-" + Format(value.Negate());
        if (value.Ticks % TimeSpan.TicksPerSecond != 0)
        {
            return value < TimeSpan.FromSeconds(1)
                ? (value.Ticks / (decimal)TimeSpan.TicksPerMillisecond).ToString("0.#######", CultureInfo.InvariantCulture) + "ms" // to the tick: 100ns is 0.0001ms, not 0ms
                : ((decimal)value.Ticks / TimeSpan.TicksPerSecond).ToString("0.###", CultureInfo.InvariantCulture) + "s";
        }
        var sb = new StringBuilder();
        var hours = (long)value.TotalHours;
        if (hours > 0) sb.Append(CultureInfo.InvariantCulture, $"{hours}h");
        if (value.Minutes > 0) sb.Append(CultureInfo.InvariantCulture, $"{value.Minutes}m");
        if (value.Seconds > 0) sb.Append(CultureInfo.InvariantCulture, $"{value.Seconds}s");
        return sb.ToString();
    }
}
