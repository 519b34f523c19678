using System.Text.RegularExpressions;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>Makes scripts comparable as golden strings: a Maglev map's hundreds of elements become a count.</summary>
internal static partial class Golden
{
    /// <summary>Replaces the element list of every command on a Maglev map (d1, n2, …) with "{ N elements }".</summary>
    public static string Shape(string script) => MaglevElements().Replace(script.TrimEnd('\n'),
        m => $"{m.Groups[1].Value} {{ {m.Groups[2].Value.Split(", ").Length} elements }}");

    [GeneratedRegex(@"^((?:add|delete) element \S+ \S+ [dn]\d+) \{ (.*) \}$", RegexOptions.Multiline)]
    private static partial Regex MaglevElements();

    public static string Lines(params string[] lines) => string.Join("\n", lines);
}
