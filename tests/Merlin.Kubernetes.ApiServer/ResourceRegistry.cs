using System.Text.Json.Nodes;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>One served resource: where it lives in the URL space, its kind, scope and subresources.</summary>
public sealed record ResourceType(
    string Group, string Version, string Plural, string Singular, string Kind,
    bool Namespaced, bool HasStatus, IReadOnlyList<string> ShortNames)
{
    public string GroupVersion => Group.Length == 0 ? Version : $"{Group}/{Version}";
    public string ApiVersion => GroupVersion;
    public string GroupResource => Group.Length == 0 ? Plural : $"{Plural}.{Group}";

    /// <summary>The storage key: one store per group and resource, whatever the version.</summary>
    public string StorageKey => $"{Group}/{Plural}";

    public static readonly string[] Verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
}

/// <summary>
/// The resources the server knows: the built-in ones the controller and the example manifests use, plus
/// those of every established CustomResourceDefinition (added and removed as CRDs come and go).
/// </summary>
public sealed class ResourceRegistry
{
    readonly Lock _gate = new();
    readonly List<ResourceType> _types = [];
    readonly Dictionary<string, List<ResourceType>> _byCrd = [];

    public ResourceRegistry()
    {
        Add("", "v1", "namespaces", "Namespace", false, true, "ns");
        Add("", "v1", "services", "Service", true, true, "svc");
        Add("", "v1", "nodes", "Node", false, true, "no");
        Add("", "v1", "events", "Event", true, false, "ev");
        Add("", "v1", "serviceaccounts", "ServiceAccount", true, false, "sa");
        Add("", "v1", "configmaps", "ConfigMap", true, false, "cm");
        Add("", "v1", "secrets", "Secret", true, false);
        Add("", "v1", "pods", "Pod", true, true, "po");
        Add("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false);
        Add("coordination.k8s.io", "v1", "leases", "Lease", true, false);
        Add("events.k8s.io", "v1", "events", "Event", true, false, "ev");
        Add("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, true, "crd", "crds");
        Add("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, false);
        Add("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, false);
        Add("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false);
        Add("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, false);
        Add("apps", "v1", "deployments", "Deployment", true, true, "deploy");
        Add("apps", "v1", "daemonsets", "DaemonSet", true, true, "ds");
    }

    void Add(string group, string version, string plural, string kind, bool namespaced, bool status, params string[] shortNames) =>
        _types.Add(new ResourceType(group, version, plural, kind.ToLowerInvariant(), kind, namespaced, status, shortNames));

    public IReadOnlyList<ResourceType> All
    {
        get { lock (_gate) return [.. _types]; }
    }

    public ResourceType? Find(string group, string version, string plural)
    {
        lock (_gate) return _types.Find(t => t.Group == group && t.Version == version && t.Plural == plural);
    }

    public ResourceType? FindKind(string apiVersion, string kind)
    {
        var (group, version) = SplitApiVersion(apiVersion);
        lock (_gate) return _types.Find(t => t.Group == group && t.Version == version && t.Kind == kind);
    }

    public static (string Group, string Version) SplitApiVersion(string apiVersion)
    {
        var slash = apiVersion.IndexOf('/');
        return slash < 0 ? ("", apiVersion) : (apiVersion[..slash], apiVersion[(slash + 1)..]);
    }

    /// <summary>Serves (or re-serves, after an update) the versions a CRD declares.</summary>
    public void RegisterCrd(JsonObject crd)
    {
        var name = crd["metadata"]?["name"]?.GetValue<string>() ?? "";
        var spec = crd["spec"] as JsonObject ?? throw ApiError.BadRequest("CustomResourceDefinition without spec");
        var group = spec["group"]?.GetValue<string>() ?? "";
        var names = spec["names"] as JsonObject ?? new JsonObject();
        var plural = names["plural"]?.GetValue<string>() ?? "";
        var kind = names["kind"]?.GetValue<string>() ?? "";
        var singular = names["singular"]?.GetValue<string>() ?? kind.ToLowerInvariant();
        var shortNames = (names["shortNames"] as JsonArray)?.Select(n => n!.GetValue<string>()).ToArray() ?? [];
        var namespaced = spec["scope"]?.GetValue<string>() != "Cluster";
        var types = new List<ResourceType>();
        foreach (var v in spec["versions"] as JsonArray ?? [])
        {
            if (v is not JsonObject version || version["served"]?.GetValue<bool>() == false) continue;
            var hasStatus = version["subresources"]?["status"] is not null;
            types.Add(new ResourceType(group, version["name"]!.GetValue<string>(), plural, singular, kind, namespaced, hasStatus, shortNames));
        }
        lock (_gate)
        {
            UnregisterCrdLocked(name);
            _byCrd[name] = types;
            _types.AddRange(types);
        }
    }

    public IReadOnlyList<ResourceType> CrdTypes(string crdName)
    {
        lock (_gate) return _byCrd.TryGetValue(crdName, out var types) ? [.. types] : [];
    }

    /// <summary>Stops serving a CRD's resources; returns what was served so the caller can drop the objects.</summary>
    public IReadOnlyList<ResourceType> UnregisterCrd(string name)
    {
        lock (_gate) return UnregisterCrdLocked(name);
    }

    List<ResourceType> UnregisterCrdLocked(string name)
    {
        if (!_byCrd.Remove(name, out var old)) return [];
        _types.RemoveAll(old.Contains);
        return old;
    }
}
