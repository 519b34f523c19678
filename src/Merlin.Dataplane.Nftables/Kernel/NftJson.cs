using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// Reads the elements of one set from <c>nft -j list set|map</c> and writes each the way the
/// renderer does (same key text, same element text), so what the kernel holds and what we meant to
/// write compare as strings.
/// </summary>
internal static class NftJson
{
    public static List<(string Key, string Element)> Elements(string json)
    {
        var result = new List<(string, string)>();
        using var document = JsonDocument.Parse(json);
        foreach (var item in document.RootElement.GetProperty("nftables").EnumerateArray())
        {
            JsonElement set;
            if (!item.TryGetProperty("set", out set) && !item.TryGetProperty("map", out set)) continue;
            if (!set.TryGetProperty("elem", out var elements)) continue;
            foreach (var element in elements.EnumerateArray())
            {
                if (element.ValueKind == JsonValueKind.Array && element.GetArrayLength() == 2)
                {
                    var (key, _) = Value(element[0]);
                    var (data, _) = Value(element[1]);
                    result.Add((key, $"{key} : {data}"));
                }
                else
                {
                    var (key, comment) = Value(element);
                    result.Add((key, comment is null ? key : $"{key} comment \"{comment}\""));
                }
            }
        }
        return result;
    }

    /// <summary>The (key, comment) pairs of a set of marks with comments: the state records.</summary>
    public static List<(uint Key, string Comment)> Comments(string json)
    {
        var result = new List<(uint, string)>();
        using var document = JsonDocument.Parse(json);
        foreach (var item in document.RootElement.GetProperty("nftables").EnumerateArray())
        {
            if (!item.TryGetProperty("set", out var set) || !set.TryGetProperty("elem", out var elements)) continue;
            foreach (var element in elements.EnumerateArray())
            {
                if (element.ValueKind != JsonValueKind.Object || !element.TryGetProperty("elem", out var inner)) continue;
                var key = inner.GetProperty("val").GetUInt32();
                var comment = inner.TryGetProperty("comment", out var c) ? c.GetString() ?? "" : "";
                result.Add((key, comment));
            }
        }
        return result;
    }

    private static (string Text, string? Comment) Value(JsonElement value)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Number:
                return (value.GetRawText(), null);
            case JsonValueKind.String:
                var text = value.GetString() ?? "";
                if (text.Contains(':') && IPAddress.TryParse(text, out var v6)) return (v6.ToString(), null);   // IPv6: canonical form
                return (text.ToLowerInvariant(), null);
            case JsonValueKind.Object:
                if (value.TryGetProperty("concat", out var parts))
                    return (string.Join(" . ", parts.EnumerateArray().Select(p => Value(p).Text)), null);
                if (value.TryGetProperty("goto", out var go)) return ($"goto {go.GetProperty("target").GetString()}", null);
                if (value.TryGetProperty("jump", out var jump)) return ($"jump {jump.GetProperty("target").GetString()}", null);
                if (value.TryGetProperty("elem", out var inner))
                {
                    var (text2, _) = Value(inner.GetProperty("val"));
                    return (text2, inner.TryGetProperty("comment", out var c) ? c.GetString() : null);
                }
                if (value.TryGetProperty("prefix", out var prefix))
                    return ($"{Value(prefix.GetProperty("addr")).Text}/{prefix.GetProperty("len").GetInt32().ToString(CultureInfo.InvariantCulture)}", null);
                break;
        }
        var raw = new StringBuilder("?").Append(value.GetRawText()).ToString();
        return (raw, null);
    }
}
