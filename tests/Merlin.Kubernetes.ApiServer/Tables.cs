using System.Globalization;
using System.Text.Json.Nodes;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// Server-side printing (<c>Accept: application/json;as=Table;g=meta.k8s.io;v=v1</c>), which kubectl get asks
/// for: the real columns for Services (so EXTERNAL-IP shows what the controller wrote), a CRD's
/// additionalPrinterColumns for simple <c>.a.b</c> JSON paths, and Name/Age for everything else.
/// </summary>
static class Tables
{
    public static bool Wanted(string? accept) =>
        accept is not null && accept.Contains("as=Table", StringComparison.Ordinal) && accept.Contains("g=meta.k8s.io", StringComparison.Ordinal);

    sealed record Column(string Name, string Type, Func<JsonObject, string> Cell, int Priority = 0, string Format = "");

    public static JsonObject Of(ResourceType type, IEnumerable<JsonObject> items, long rv, bool includeObject, JsonObject? crd)
    {
        var columns = Columns(type, crd);
        return new JsonObject
        {
            ["kind"] = "Table",
            ["apiVersion"] = "meta.k8s.io/v1",
            ["metadata"] = new JsonObject { ["resourceVersion"] = rv.ToString(CultureInfo.InvariantCulture) },
            ["columnDefinitions"] = new JsonArray(columns.Select(c => (JsonNode)new JsonObject
            {
                ["name"] = c.Name, ["type"] = c.Type, ["format"] = c.Format, ["description"] = "", ["priority"] = c.Priority,
            }).ToArray()),
            ["rows"] = new JsonArray(items.Select(o => (JsonNode)new JsonObject
            {
                ["cells"] = new JsonArray(columns.Select(c => (JsonNode?)c.Cell(o)).ToArray()),
                ["object"] = includeObject ? o.DeepClone() : new JsonObject
                {
                    ["kind"] = "PartialObjectMetadata",
                    ["apiVersion"] = "meta.k8s.io/v1",
                    ["metadata"] = o["metadata"]?.DeepClone(),
                },
            }).ToArray()),
        };
    }

    static List<Column> Columns(ResourceType type, JsonObject? crd)
    {
        var name = new Column("Name", "string", o => Meta.Name(o), Format: "name");
        var age = new Column("Age", "string", o => Age(o["metadata"]?["creationTimestamp"]?.GetValue<string>()));
        if (type is { Group: "", Plural: "services" })
            return
            [
                name,
                new Column("Type", "string", o => Text(o["spec"]?["type"]) ?? "ClusterIP"),
                new Column("Cluster-IP", "string", o => Text(o["spec"]?["clusterIP"]) ?? "<none>"),
                new Column("External-IP", "string", ExternalIps),
                new Column("Port(s)", "string", Ports),
                age,
            ];
        var printer = (crd?["spec"]?["versions"] as JsonArray)?
            .FirstOrDefault(v => Text(v?["name"]) == type.Version)?["additionalPrinterColumns"] as JsonArray;
        if (printer is null) return [name, age];
        var columns = new List<Column> { name };
        foreach (var c in printer.OfType<JsonObject>())
        {
            var path = Text(c["jsonPath"]) ?? "";
            if (path == ".metadata.creationTimestamp")
            {
                columns.Add(age with { Name = Text(c["name"]) ?? "Age" });
                continue;
            }
            var segments = path.TrimStart('.').Split('.');
            columns.Add(new Column(Text(c["name"]) ?? path, Text(c["type"]) ?? "string", o =>
            {
                JsonNode? node = o;
                foreach (var s in segments) node = node?[s];
                return node is null ? "" : node is JsonValue v ? v.ToString() : node.ToJsonString();
            }, c["priority"]?.GetValue<int>() ?? 0));
        }
        if (!columns.Any(c => c.Name == "Age")) columns.Add(age);
        return columns;
    }

    static string? Text(JsonNode? n) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;

    static string ExternalIps(JsonObject svc)
    {
        var ips = (svc["status"]?["loadBalancer"]?["ingress"] as JsonArray)?
            .Select(i => Text(i?["ip"]) ?? Text(i?["hostname"])).Where(s => s is not null).ToList() ?? [];
        ips.AddRange((svc["spec"]?["externalIPs"] as JsonArray)?.Select(Text).Where(s => s is not null) ?? []);
        if (ips.Count > 0) return string.Join(',', ips);
        return Text(svc["spec"]?["type"]) == "LoadBalancer" ? "<pending>" : "<none>";
    }

    static string Ports(JsonObject svc)
    {
        var ports = (svc["spec"]?["ports"] as JsonArray)?.OfType<JsonObject>().Select(p =>
        {
            var port = p["port"]?.ToJsonString();
            var node = p["nodePort"]?.ToJsonString();
            return $"{port}{(node is null ? "" : ":" + node)}/{Text(p["protocol"]) ?? "TCP"}";
        }).ToList() ?? [];
        return ports.Count == 0 ? "<none>" : string.Join(',', ports);
    }

    /// <summary>kubectl's short durations: 42s, 3m5s, 25m, 4h10m, 30h, 9d.</summary>
    static string Age(string? timestamp)
    {
        if (!DateTime.TryParse(timestamp, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out var created))
            return "<unknown>";
        var d = DateTime.UtcNow - created;
        if (d < TimeSpan.Zero) d = TimeSpan.Zero;
        return d.TotalMinutes < 2 ? $"{(int)d.TotalSeconds}s"
            : d.TotalMinutes < 10 ? $"{(int)d.TotalMinutes}m{d.Seconds}s"
            : d.TotalHours < 3 ? $"{(int)d.TotalMinutes}m"
            : d.TotalHours < 8 ? $"{(int)d.TotalHours}h{d.Minutes}m"
            : d.TotalHours < 48 ? $"{(int)d.TotalHours}h"
            : $"{(int)d.TotalDays}d";
    }
}
