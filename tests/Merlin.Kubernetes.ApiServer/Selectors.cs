using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// Label selectors (<c>=</c>, <c>==</c>, <c>!=</c>, <c>in</c>, <c>notin</c>, <c>key</c>, <c>!key</c>) and
/// field selectors (<c>=</c>, <c>==</c>, <c>!=</c>). The real server accepts only a few fields per
/// resource (metadata.name and metadata.namespace everywhere); this one resolves any dotted path.
/// </summary>
public static partial class Selectors
{
    public static Func<JsonObject, bool> Parse(string? labelSelector, string? fieldSelector)
    {
        var label = ParseLabels(labelSelector);
        var field = ParseFields(fieldSelector);
        return o => label(o) && field(o);
    }

    [GeneratedRegex(@"^\s*(?<key>[^\s!=()]+)\s+(?<op>in|notin)\s*\((?<values>[^)]*)\)\s*$")]
    private static partial Regex SetRequirement();

    public static Func<JsonObject, bool> ParseLabels(string? selector)
    {
        var requirements = new List<Func<IReadOnlyDictionary<string, string>, bool>>();
        foreach (var raw in SplitTopLevel(selector))
        {
            var req = raw.Trim();
            if (req.Length == 0) continue;
            if (SetRequirement().Match(req) is { Success: true } set)
            {
                var key = set.Groups["key"].Value;
                var values = set.Groups["values"].Value.Split(',').Select(v => v.Trim()).ToHashSet();
                var negate = set.Groups["op"].Value == "notin";
                requirements.Add(l => negate ? !l.TryGetValue(key, out var v) || !values.Contains(v) : l.TryGetValue(key, out var w) && values.Contains(w));
            }
            else if (req.StartsWith('!'))
            {
                var key = req[1..].Trim();
                requirements.Add(l => !l.ContainsKey(key));
            }
            else if (SplitComparison(req) is var (key, op, value))
            {
                requirements.Add(op == "!=" ? l => !l.TryGetValue(key, out var v) || v != value : l => l.TryGetValue(key, out var v) && v == value);
            }
            else
            {
                if (req.Any(c => char.IsWhiteSpace(c) || c is '(' or ')')) throw ApiError.BadRequest($"unable to parse requirement: {req}");
                requirements.Add(l => l.ContainsKey(req));
            }
        }
        return o =>
        {
            var labels = (o["metadata"]?["labels"] as JsonObject)?
                .ToDictionary(kv => kv.Key, kv => kv.Value?.GetValue<string>() ?? "") ?? [];
            return requirements.All(r => r(labels));
        };
    }

    public static Func<JsonObject, bool> ParseFields(string? selector)
    {
        var requirements = new List<Func<JsonObject, bool>>();
        foreach (var raw in SplitTopLevel(selector))
        {
            var req = raw.Trim();
            if (req.Length == 0) continue;
            if (SplitComparison(req) is not var (path, op, value)) throw ApiError.BadRequest($"invalid selector: '{req}'; can't understand '{req}'");
            var segments = path.Split('.');
            requirements.Add(o =>
            {
                JsonNode? node = o;
                foreach (var s in segments) node = node?[s];
                var actual = node is JsonValue v ? v.ToString() : node is null ? "" : node.ToJsonString();
                return op == "!=" ? actual != value : actual == value;
            });
        }
        return o => requirements.All(r => r(o));
    }

    /// <summary>Splits <c>key op value</c> on the first of <c>!=</c>, <c>==</c>, <c>=</c>; null if none.</summary>
    static (string Key, string Op, string Value)? SplitComparison(string req)
    {
        foreach (var op in new[] { "!=", "==", "=" })
        {
            var at = req.IndexOf(op, StringComparison.Ordinal);
            if (at > 0) return (req[..at].Trim(), op, req[(at + op.Length)..].Trim());
        }
        return null;
    }

    /// <summary>Splits on commas outside parentheses (a set's values are comma-separated too).</summary>
    static IEnumerable<string> SplitTopLevel(string? selector)
    {
        if (string.IsNullOrWhiteSpace(selector)) yield break;
        int depth = 0, start = 0;
        for (var i = 0; i < selector.Length; i++)
        {
            if (selector[i] == '(') depth++;
            else if (selector[i] == ')') depth--;
            else if (selector[i] == ',' && depth == 0)
            {
                yield return selector[start..i];
                start = i + 1;
            }
        }
        yield return selector[start..];
    }
}
