using System.Globalization;
using Merlin.Model;

namespace Merlin.Cli.Parsing;

/// <summary>Small value parsers shared by the commands; each error says what was expected.</summary>
public static class Values
{
    public static bool TryParseUInt(string text, uint min, uint max, out uint value, out string? error)
    {
        if (uint.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out value) && value >= min && value <= max)
        {
            error = null;
            return true;
        }
        error = $"{Validation.Quote(text)} is not a whole number from {min} to {max}";
        return false;
    }

    /// <summary>Whole seconds, bare (<c>300</c>) or as a duration (<c>5m</c>).</summary>
    public static bool TryParseSeconds(string text, out uint seconds, out string? error)
    {
        seconds = 0;
        var s = text.Trim();
        if (uint.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out seconds))
        {
            error = null;
            return true;
        }
        if (!Durations.TryParse(s, out var span, out _))
        {
            error = $"{Validation.Quote(text)} is not a number of seconds (e.g. 300 or 5m)";
            return false;
        }
        if (span.Ticks % TimeSpan.TicksPerSecond != 0 || span.TotalSeconds > uint.MaxValue)
        {
            error = $"{Validation.Quote(text)} is not a whole number of seconds";
            return false;
        }
        seconds = (uint)span.TotalSeconds;
        error = null;
        return true;
    }

    /// <summary>A prefix length, written <c>24</c> or <c>/24</c>.</summary>
    public static bool TryParsePrefixLength(string text, out uint bits, out string? error)
    {
        var s = text.Trim();
        if (s.StartsWith('/')) s = s[1..];
        if (TryParseUInt(s, 0, 128, out bits, out _))
        {
            error = null;
            return true;
        }
        error = $"{Validation.Quote(text)} is not a prefix length (0-32 for IPv4, 0-128 for IPv6)";
        return false;
    }

    /// <summary>Comma-separated and/or repeated lists: <c>-b sh-port,sh-fallback</c> or <c>-b sh-port -b sh-fallback</c>.</summary>
    public static List<string> SplitList(IEnumerable<string> tokens) =>
        tokens.SelectMany(t => t.Split(',')).Select(t => t.Trim()).Where(t => t.Length > 0).ToList();
}
