using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// The patch formats the API accepts. JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are exact.
/// Strategic merge patch is approximated: its directives (<c>$patch</c>, <c>$retainKeys</c>,
/// <c>$setElementOrder/…</c>, <c>$deleteFromPrimitiveList/…</c>) are honoured and lists of objects are
/// merged by a small table of the built-in types' merge keys (ports, containers, env, …) — enough for
/// <c>kubectl apply</c>; any other list is replaced as in a merge patch. Server-side apply
/// (<c>application/apply-patch+yaml</c>) is approximated as a merge patch that creates a missing object:
/// there is no field ownership, so fields a manager stops applying are kept, not removed.
/// </summary>
public static class Patches
{
    public const string Merge = "application/merge-patch+json";
    public const string Json = "application/json-patch+json";
    public const string Strategic = "application/strategic-merge-patch+json";
    public const string Apply = "application/apply-patch+yaml";

    public static JsonObject ApplyPatch(string contentType, JsonObject target, string body)
    {
        JsonNode? result = contentType switch
        {
            Merge or Apply => MergePatch(target, ParseObject(body, contentType == Apply)),
            Strategic => StrategicMerge(target, ParseObject(body, false)),
            Json => JsonPatch(target, JsonNode.Parse(body) as JsonArray ?? throw ApiError.BadRequest("a JSON patch must be an array")),
            _ => throw ApiError.UnsupportedMediaType(contentType),
        };
        return result as JsonObject ?? throw ApiError.BadRequest("the patch did not leave an object");
    }

    static JsonObject ParseObject(string body, bool yaml)
    {
        try
        {
            return (yaml && !body.TrimStart().StartsWith('{') ? Yaml.ToJson(body) : JsonNode.Parse(body)) as JsonObject
                   ?? throw ApiError.BadRequest("the patch must be an object");
        }
        catch (Exception e) when (e is JsonException or YamlException)
        {
            throw ApiError.BadRequest($"error decoding patch: {e.Message}");
        }
    }

    /// <summary>RFC 7386: objects merge recursively, null removes, anything else replaces.</summary>
    public static JsonNode? MergePatch(JsonNode? target, JsonNode? patch)
    {
        if (patch is not JsonObject p) return patch?.DeepClone();
        var result = target is JsonObject t ? (JsonObject)t.DeepClone() : new JsonObject();
        foreach (var (key, value) in p)
        {
            if (value is null) result.Remove(key);
            else result[key] = MergePatch(result[key], value);
        }
        return result;
    }

    /// <summary>RFC 6902 operations on JSON pointers.</summary>
    public static JsonNode JsonPatch(JsonNode target, JsonArray ops)
    {
        var doc = target.DeepClone();
        foreach (var raw in ops)
        {
            var op = raw as JsonObject ?? throw ApiError.BadRequest("a JSON patch operation must be an object");
            var name = op["op"]?.GetValue<string>();
            var path = op["path"]?.GetValue<string>() ?? throw ApiError.BadRequest("a JSON patch operation needs a path");
            switch (name)
            {
                case "add": Add(ref doc, path, op["value"]?.DeepClone()); break;
                case "remove": Remove(doc, path); break;
                case "replace": Remove(doc, path); Add(ref doc, path, op["value"]?.DeepClone()); break;
                case "move":
                {
                    var from = op["from"]!.GetValue<string>();
                    var value = Resolve(doc, from)?.DeepClone();
                    Remove(doc, from);
                    Add(ref doc, path, value);
                    break;
                }
                case "copy": Add(ref doc, path, Resolve(doc, op["from"]!.GetValue<string>())?.DeepClone()); break;
                case "test":
                    if (!JsonNode.DeepEquals(Resolve(doc, path), op["value"]))
                        throw new ApiError(422, "Invalid", $"the server rejected our request due to an error in our request: test failed at {path}");
                    break;
                default: throw ApiError.BadRequest($"unknown JSON patch operation {name}");
            }
        }
        return doc;
    }

    static string[] Pointer(string path) =>
        path.Length == 0 ? [] : path.Split('/').Skip(1).Select(s => s.Replace("~1", "/").Replace("~0", "~")).ToArray();

    static JsonNode? Resolve(JsonNode? doc, string path) => Resolve(doc, Pointer(path), path);

    static JsonNode? Resolve(JsonNode? doc, IEnumerable<string> segments, string path)
    {
        foreach (var s in segments)
        {
            doc = doc switch
            {
                JsonObject o when o.ContainsKey(s) => o[s],
                JsonArray a when int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var i) && i < a.Count => a[i],
                _ => throw new ApiError(422, "Invalid", $"the server rejected our request due to an error in our request: path {path} does not exist"),
            };
        }
        return doc;
    }

    static (JsonNode Parent, string Last) Parent(JsonNode doc, string path)
    {
        var segments = Pointer(path);
        var parent = Resolve(doc, segments[..^1], path) ?? throw ApiError.BadRequest($"no parent for {path}");
        return (parent, segments[^1]);
    }

    static void Add(ref JsonNode doc, string path, JsonNode? value)
    {
        if (path.Length == 0)
        {
            doc = value ?? throw ApiError.BadRequest("cannot replace the document with null");
            return;
        }
        var (parent, last) = Parent(doc, path);
        switch (parent)
        {
            case JsonObject o: o[last] = value; break;
            case JsonArray a when last == "-": a.Add(value); break;
            case JsonArray a when int.TryParse(last, out var i) && i <= a.Count: a.Insert(i, value); break;
            default: throw new ApiError(422, "Invalid", $"the server rejected our request due to an error in our request: cannot add at {path}");
        }
    }

    static void Remove(JsonNode doc, string path)
    {
        var (parent, last) = Parent(doc, path);
        var removed = parent switch
        {
            JsonObject o => o.Remove(last),
            JsonArray a when int.TryParse(last, out var i) && i < a.Count => RemoveAt(a, i),
            _ => false,
        };
        if (!removed) throw new ApiError(422, "Invalid", $"the server rejected our request due to an error in our request: path {path} does not exist");
    }

    static bool RemoveAt(JsonArray a, int i)
    {
        a.RemoveAt(i);
        return true;
    }

    /// <summary>Merge keys of the built-in types' lists that strategic merge patch merges element-wise.</summary>
    static string? MergeKey(string field, JsonArray sample)
    {
        var first = sample.OfType<JsonObject>().FirstOrDefault();
        return field switch
        {
            "ports" => first?.ContainsKey("containerPort") == true ? "containerPort" : "port",
            "containers" or "initContainers" or "ephemeralContainers" or "env" or "volumes" or "imagePullSecrets" => "name",
            "volumeMounts" => "mountPath",
            "conditions" or "addresses" => "type",
            "ownerReferences" => "uid",
            "hostAliases" => "ip",
            _ => null,
        };
    }

    /// <summary>Primitive lists whose strategy is merge (a union), not replace.</summary>
    static bool MergesPrimitives(string field) => field is "finalizers";

    public static JsonNode? StrategicMerge(JsonNode? target, JsonObject patch)
    {
        if (patch["$patch"]?.GetValue<string>() is { } directive)
        {
            if (directive == "delete") return null;
            if (directive == "replace")
            {
                var replaced = (JsonObject)patch.DeepClone();
                replaced.Remove("$patch");
                return replaced;
            }
        }
        var result = target is JsonObject t ? (JsonObject)t.DeepClone() : new JsonObject();
        foreach (var (key, value) in patch)
        {
            if (key.StartsWith("$setElementOrder/", StringComparison.Ordinal) || key is "$retainKeys" or "$patch") continue;
            if (key.StartsWith("$deleteFromPrimitiveList/", StringComparison.Ordinal))
            {
                var field = key["$deleteFromPrimitiveList/".Length..];
                if (result[field] is JsonArray list && value is JsonArray drop)
                    result[field] = new JsonArray(list.Where(e => !drop.Any(d => JsonNode.DeepEquals(d, e))).Select(e => e?.DeepClone()).ToArray());
                continue;
            }
            if (value is null) result.Remove(key);
            else if (value is JsonObject obj)
            {
                var merged = StrategicMerge(result[key], obj);
                if (merged is null) result.Remove(key);
                else result[key] = merged;
            }
            else if (value is JsonArray arr) result[key] = MergeList(key, result[key] as JsonArray, arr, patch[$"$setElementOrder/{key}"] as JsonArray);
            else result[key] = value.DeepClone();
        }
        if (patch["$retainKeys"] is JsonArray retain)
        {
            var keep = retain.Select(k => k!.GetValue<string>()).ToHashSet();
            foreach (var k in result.Select(kv => kv.Key).Where(k => !keep.Contains(k)).ToList()) result.Remove(k);
        }
        return result;
    }

    static JsonArray MergeList(string field, JsonArray? current, JsonArray patch, JsonArray? order)
    {
        if (patch.All(e => e is not JsonObject))
        {
            if (!MergesPrimitives(field) || current is null) return (JsonArray)patch.DeepClone();
            var union = current.Select(e => e?.DeepClone()).ToList();
            union.AddRange(patch.Where(p => !current.Any(c => JsonNode.DeepEquals(c, p))).Select(p => p?.DeepClone()));
            return new JsonArray(union.ToArray());
        }
        var key = MergeKey(field, patch);
        if (key is null || current is null)
            return new JsonArray(patch.OfType<JsonObject>().Where(e => e["$patch"]?.GetValue<string>() != "delete")
                .Select(e => StrategicMerge(null, e)).ToArray());
        var items = current.Select(e => e?.DeepClone()).ToList();
        foreach (var element in patch.OfType<JsonObject>())
        {
            var at = items.FindIndex(e => JsonNode.DeepEquals(e?[key], element[key]));
            var merged = StrategicMerge(at >= 0 ? items[at] : null, element);
            if (at >= 0 && merged is null) items.RemoveAt(at);
            else if (at >= 0) items[at] = merged;
            else if (merged is not null) items.Add(merged);
        }
        if (order is not null)
        {
            int Rank(JsonNode? e)
            {
                var i = order.ToList().FindIndex(o => JsonNode.DeepEquals(o?[key], e?[key]));
                return i < 0 ? int.MaxValue : i;
            }
            items = [.. items.OrderBy(Rank)];
        }
        return new JsonArray(items.ToArray());
    }
}

/// <summary>YAML to JSON with YAML 1.2 core-schema scalars (plain true/false/null/numbers; quoted strings).</summary>
static class Yaml
{
    public static JsonNode? ToJson(string text)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(text));
        return stream.Documents.Count == 0 ? null : Convert(stream.Documents[0].RootNode);
    }

    static JsonNode? Convert(YamlNode node) => node switch
    {
        YamlMappingNode map => new JsonObject(map.Children.Select(kv =>
            KeyValuePair.Create(((YamlScalarNode)kv.Key).Value ?? "", Convert(kv.Value)))),
        YamlSequenceNode seq => new JsonArray(seq.Children.Select(Convert).ToArray()),
        YamlScalarNode s when s.Style is ScalarStyle.Plain => Plain(s.Value ?? ""),
        YamlScalarNode s => JsonValue.Create(s.Value ?? ""),
        _ => null,
    };

    static JsonNode? Plain(string v)
    {
        if (v is "" or "~" or "null" or "Null" or "NULL") return null;
        if (v is "true" or "True" or "TRUE") return JsonValue.Create(true);
        if (v is "false" or "False" or "FALSE") return JsonValue.Create(false);
        if (long.TryParse(v, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l)) return JsonValue.Create(l);
        if (double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) return JsonValue.Create(d);
        return JsonValue.Create(v);
    }
}
