using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Merlin.Kubernetes.Kube;

/// <summary>The cluster-scoped custom resource <c>IPPool</c> (merlin.io/v1): addresses Services may get.
/// Its schema is deploy/kubernetes/crd-ippool.yaml; keep the two in step.</summary>
public sealed class V1IPPool : IKubernetesObject<V1ObjectMeta>, ISpec<V1IPPoolSpec>
{
    public const string Group = "merlin.io";
    public const string Version = "v1";
    public const string Plural = "ippools";
    public const string KindName = "IPPool";

    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = $"{Group}/{Version}";
    [JsonPropertyName("kind")] public string Kind { get; set; } = KindName;
    [JsonPropertyName("metadata")] public V1ObjectMeta Metadata { get; set; } = new();
    [JsonPropertyName("spec")] public V1IPPoolSpec Spec { get; set; } = new();
    [JsonPropertyName("status")] public V1IPPoolStatus? Status { get; set; }
}

public sealed class V1IPPoolSpec
{
    /// <summary>CIDRs (<c>198.18.100.0/24</c>, <c>2001:db8::/120</c>), ranges (<c>first-last</c>) or single addresses.</summary>
    [JsonPropertyName("addresses")] public IList<string>? Addresses { get; set; }
    /// <summary>Services that name no pool and no address get addresses from this pool (default true).</summary>
    [JsonPropertyName("autoAssign")] public bool? AutoAssign { get; set; }
    /// <summary>Never hand out IPv4 addresses ending in .0 or .255 (some clients and routers drop them).</summary>
    [JsonPropertyName("avoidBuggyIPs")] public bool? AvoidBuggyIPs { get; set; }
    /// <summary>Only Services whose labels match may use this pool (none: any).</summary>
    [JsonPropertyName("serviceSelector")] public V1LabelSelector? ServiceSelector { get; set; }
    /// <summary>Only Services in these namespaces may use this pool (none: any).</summary>
    [JsonPropertyName("namespaces")] public IList<string>? Namespaces { get; set; }
}

public sealed class V1IPPoolStatus
{
    [JsonPropertyName("total")] public long Total { get; set; }
    [JsonPropertyName("used")] public long Used { get; set; }
    [JsonPropertyName("free")] public long Free { get; set; }
    [JsonPropertyName("conditions")] public IList<V1Condition>? Conditions { get; set; }
}

public sealed class V1IPPoolList : IKubernetesObject<V1ListMeta>, IItems<V1IPPool>
{
    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = $"{V1IPPool.Group}/{V1IPPool.Version}";
    [JsonPropertyName("kind")] public string Kind { get; set; } = "IPPoolList";
    [JsonPropertyName("metadata")] public V1ListMeta Metadata { get; set; } = new();
    [JsonPropertyName("items")] public IList<V1IPPool> Items { get; set; } = [];
}
