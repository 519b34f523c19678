using System.Net;
using System.Text.Json.Nodes;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// The API server's defaulting and allocation for the kinds the controller reads: a Service gets its
/// type, protocols and target ports, single-stack IPv4 families, traffic policies, a cluster IP (from
/// 198.19.128.0/17, inside the test range) and, when it needs them, node ports (30000–32767) and a health-check node port — and
/// keeps what was allocated when an update leaves those fields out, as the real registry does.
/// A Namespace gets its <c>kubernetes.io/metadata.name</c> label.
/// </summary>
sealed class Defaults
{
    int _nextClusterIp = 1;
    int _nextNodePort = 30000;

    /// <summary>Called under the store's lock before a create or update of the main resource.</summary>
    public void Apply(ResourceType type, JsonObject obj, JsonObject? old)
    {
        if (type is { Group: "", Plural: "namespaces" })
        {
            var labels = Meta.Of(obj)["labels"] as JsonObject ?? new JsonObject();
            labels["kubernetes.io/metadata.name"] = Meta.Name(obj);
            Meta.Of(obj)["labels"] = labels;
        }
        else if (type is { Group: "", Plural: "services" })
            Service(obj, old);
    }

    void Service(JsonObject svc, JsonObject? old)
    {
        var spec = svc["spec"] as JsonObject ?? new JsonObject();
        svc["spec"] = spec;
        var oldSpec = old?["spec"] as JsonObject;
        var type = spec["type"]?.GetValue<string>() ?? "ClusterIP";
        spec["type"] = type;
        spec["sessionAffinity"] ??= "None";
        if (type == "ExternalName") return;

        if (spec["clusterIP"] is null && oldSpec?["clusterIP"] is { } keptIp) spec["clusterIP"] = keptIp.DeepClone();
        if (spec["clusterIPs"] is null && oldSpec?["clusterIPs"] is { } keptIps) spec["clusterIPs"] = keptIps.DeepClone();
        var clusterIp = spec["clusterIP"]?.GetValue<string>();
        if (string.IsNullOrEmpty(clusterIp))
        {
            clusterIp = $"198.19.{128 + _nextClusterIp / 256 % 128}.{_nextClusterIp % 256}";
            _nextClusterIp++;
            spec["clusterIP"] = clusterIp;
        }
        spec["clusterIPs"] ??= new JsonArray(clusterIp);
        spec["ipFamilies"] ??= clusterIp == "None" ? new JsonArray("IPv4")
            : new JsonArray(IPAddress.TryParse(clusterIp, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4");
        spec["ipFamilyPolicy"] ??= "SingleStack";
        spec["internalTrafficPolicy"] ??= "Cluster";

        var external = type is "NodePort" or "LoadBalancer";
        if (external) spec["externalTrafficPolicy"] ??= "Cluster";
        if (type == "LoadBalancer") spec["allocateLoadBalancerNodePorts"] ??= true;
        var allocateNodePorts = type == "NodePort" || (type == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"]?.GetValue<bool>() != false);

        var oldPorts = (oldSpec?["ports"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        foreach (var port in (spec["ports"] as JsonArray)?.OfType<JsonObject>() ?? [])
        {
            port["protocol"] ??= "TCP";
            port["targetPort"] ??= port["port"]?.DeepClone();
            if (!allocateNodePorts || port["nodePort"] is not null) continue;
            var same = oldPorts.FirstOrDefault(p => JsonNode.DeepEquals(p["port"], port["port"]) && JsonNode.DeepEquals(p["protocol"] ?? "TCP", port["protocol"]));
            port["nodePort"] = same?["nodePort"]?.DeepClone() ?? NodePort();
        }
        if (external && spec["externalTrafficPolicy"]?.GetValue<string>() == "Local" && type == "LoadBalancer")
            spec["healthCheckNodePort"] ??= oldSpec?["healthCheckNodePort"]?.DeepClone() ?? NodePort();
        else
            spec.Remove("healthCheckNodePort");
    }

    JsonNode NodePort() => JsonValue.Create(_nextNodePort++ is var p && p <= 32767 ? p : throw new ApiError(422, "Invalid", "no node ports left"))!;
}
