using System.Text.Json.Nodes;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// Discovery in the legacy (unaggregated) format — kubectl asks for aggregated discovery first and falls
/// back when the answer is plain <c>application/json</c> — plus a minimal OpenAPI v3: per group-version,
/// a PATCH operation per kind that declares the <c>fieldValidation</c> query parameter. That is what
/// kubectl's default <c>--validate=strict</c> checks before handing validation to the server (which
/// here accepts everything), so <c>kubectl apply</c> works without <c>--validate=false</c>.
/// </summary>
static class Discovery
{
    public static JsonObject Version() => new()
    {
        ["major"] = "1",
        ["minor"] = "32",
        ["gitVersion"] = "v1.32.0-merlin-test",
        ["gitCommit"] = "0000000000000000000000000000000000000000",
        ["gitTreeState"] = "clean",
        ["buildDate"] = "2026-01-01T00:00:00Z",
        ["goVersion"] = "go1.23.0",
        ["compiler"] = "gc",
        ["platform"] = "linux/amd64",
    };

    public static JsonObject CoreVersions(string serverAddress) => new()
    {
        ["kind"] = "APIVersions",
        ["versions"] = new JsonArray("v1"),
        ["serverAddressByClientCIDRs"] = new JsonArray(new JsonObject { ["clientCIDR"] = "0.0.0.0/0", ["serverAddress"] = serverAddress }),
    };

    static IEnumerable<IGrouping<string, ResourceType>> Groups(IReadOnlyList<ResourceType> types) =>
        types.Where(t => t.Group.Length > 0).GroupBy(t => t.Group).OrderBy(g => g.Key, StringComparer.Ordinal);

    static JsonObject Group(IGrouping<string, ResourceType> group)
    {
        var versions = group.Select(t => t.Version).Distinct().ToList();
        JsonObject Gv(string v) => new() { ["groupVersion"] = $"{group.Key}/{v}", ["version"] = v };
        return new JsonObject
        {
            ["name"] = group.Key,
            ["versions"] = new JsonArray(versions.Select(v => (JsonNode)Gv(v)).ToArray()),
            ["preferredVersion"] = Gv(versions[0]),
        };
    }

    public static JsonObject GroupList(IReadOnlyList<ResourceType> types) => new()
    {
        ["kind"] = "APIGroupList",
        ["apiVersion"] = "v1",
        ["groups"] = new JsonArray(Groups(types).Select(g => (JsonNode)Group(g)).ToArray()),
    };

    public static JsonObject? GroupInfo(IReadOnlyList<ResourceType> types, string group)
    {
        var g = Groups(types).FirstOrDefault(g => g.Key == group);
        if (g is null) return null;
        var info = Group(g);
        info["kind"] = "APIGroup";
        info["apiVersion"] = "v1";
        return info;
    }

    public static JsonObject? ResourceList(IReadOnlyList<ResourceType> types, string groupVersion)
    {
        var served = types.Where(t => t.GroupVersion == groupVersion).ToList();
        if (served.Count == 0) return null;
        var resources = new JsonArray();
        foreach (var t in served)
        {
            resources.Add(new JsonObject
            {
                ["name"] = t.Plural,
                ["singularName"] = t.Singular,
                ["namespaced"] = t.Namespaced,
                ["kind"] = t.Kind,
                ["verbs"] = new JsonArray(ResourceType.Verbs.Select(v => (JsonNode)v).ToArray()),
                ["shortNames"] = new JsonArray(t.ShortNames.Select(s => (JsonNode)s).ToArray()),
            });
            if (t.HasStatus)
                resources.Add(new JsonObject
                {
                    ["name"] = $"{t.Plural}/status",
                    ["singularName"] = "",
                    ["namespaced"] = t.Namespaced,
                    ["kind"] = t.Kind,
                    ["verbs"] = new JsonArray("get", "patch", "update"),
                });
        }
        return new JsonObject
        {
            ["kind"] = "APIResourceList",
            ["apiVersion"] = "v1",
            ["groupVersion"] = groupVersion,
            ["resources"] = resources,
        };
    }

    static string OpenApiPath(string groupVersion) => groupVersion.Contains('/') ? $"apis/{groupVersion}" : $"api/{groupVersion}";

    public static JsonObject OpenApiV3Root(IReadOnlyList<ResourceType> types, long resourceVersion)
    {
        var paths = new JsonObject();
        foreach (var gv in types.Select(t => t.GroupVersion).Distinct())
        {
            var path = OpenApiPath(gv);
            // The hash only has to change when the document may have: kubectl caches documents by it.
            paths[path] = new JsonObject { ["serverRelativeURL"] = $"/openapi/v3/{path}?hash={resourceVersion:X16}" };
        }
        return new JsonObject { ["paths"] = paths };
    }

    public static JsonObject? OpenApiV3(IReadOnlyList<ResourceType> types, string path)
    {
        var served = types.Where(t => OpenApiPath(t.GroupVersion) == path).ToList();
        if (served.Count == 0) return null;
        var paths = new JsonObject();
        foreach (var t in served)
        {
            var prefix = "/" + path + (t.Namespaced ? "/namespaces/{namespace}" : "");
            paths[$"{prefix}/{t.Plural}/{{name}}"] = new JsonObject
            {
                ["patch"] = new JsonObject
                {
                    ["operationId"] = $"patch{t.Kind}",
                    ["x-kubernetes-action"] = "patch",
                    ["x-kubernetes-group-version-kind"] = new JsonObject { ["group"] = t.Group, ["version"] = t.Version, ["kind"] = t.Kind },
                    ["parameters"] = new JsonArray(new JsonObject
                    {
                        ["name"] = "fieldValidation",
                        ["in"] = "query",
                        ["schema"] = new JsonObject { ["type"] = "string", ["uniqueItems"] = true },
                    }),
                    ["responses"] = new JsonObject { ["200"] = new JsonObject { ["description"] = "OK" } },
                },
            };
        }
        return new JsonObject
        {
            ["openapi"] = "3.0.0",
            ["info"] = new JsonObject { ["title"] = "Kubernetes", ["version"] = "v1.32.0" },
            ["paths"] = paths,
            ["components"] = new JsonObject { ["schemas"] = new JsonObject() },
        };
    }
}
