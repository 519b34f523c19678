using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using Merlin.Kubernetes.ApiServer;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.Kubernetes.Pools;
using Merlin.Testing;
using k8s;
using k8s.Models;

namespace Merlin.Kubernetes.Tests.Deploy;

/// <summary>
/// deploy/kubernetes/ as shipped, applied with Debian's real kubectl to the in-process <see cref="TestApiServer"/> in the
/// documented order (namespace, CRD, the rest): every object lands, the example pools and Service read back as the
/// controller reads them, the Deployment's args pass the controller's own command line, the CRD's schema names exactly
/// the fields of <see cref="V1IPPoolSpec"/> and <see cref="V1IPPoolStatus"/>, and the RBAC grants nothing beyond the
/// calls the controller makes. The test server validates no schema and enforces no RBAC: those are checked here by
/// reading the objects back, not by a real kube-apiserver.
/// </summary>
public sealed class ManifestTests : IAsyncLifetime
{
    private KubectlCluster? _cluster;
    private TestApiServer Api => _cluster!.Api;
    private Kubectl Kubectl => _cluster!.Kubectl;
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly string Deploy = Path.Combine(Repository.Root, "deploy", "kubernetes");

    public async ValueTask InitializeAsync() => _cluster = await KubectlCluster.StartAsync(Ct);

    public async ValueTask DisposeAsync()
    {
        if (_cluster is not null) await _cluster.DisposeAsync();
    }

    [Fact]
    public async Task Apply_in_the_documented_order_creates_every_object_and_a_second_apply_changes_nothing()
    {
        Assert.Contains("namespace/merlin-system created", await KubectlAsync("apply", "-f", File("namespace.yaml")));
        Assert.Contains("customresourcedefinition.apiextensions.k8s.io/ippools.merlin.io created", await KubectlAsync("apply", "-f", File("crd-ippool.yaml")));
        var applied = await KubectlAsync("apply", "-f", Deploy);
        foreach (var line in new[]
        {
            "namespace/merlin-system unchanged",
            "customresourcedefinition.apiextensions.k8s.io/ippools.merlin.io unchanged",
            "serviceaccount/merlin-k8s created",
            "clusterrole.rbac.authorization.k8s.io/merlin-k8s created",
            "clusterrolebinding.rbac.authorization.k8s.io/merlin-k8s created",
            "role.rbac.authorization.k8s.io/merlin-k8s-leader-election created",
            "rolebinding.rbac.authorization.k8s.io/merlin-k8s-leader-election created",
            "deployment.apps/merlin-k8s created",
            "ippool.merlin.io/default created",
            "ippool.merlin.io/reserved created",
            "service/web created",
        })
            Assert.Contains(line, applied);

        Assert.NotNull(Api.Get<V1Namespace>("v1", "Namespace", null, "merlin-system"));
        Assert.NotNull(Api.Get<V1CustomResourceDefinition>("apiextensions.k8s.io/v1", "CustomResourceDefinition", null, "ippools.merlin.io"));
        Assert.NotNull(Api.Get<V1ServiceAccount>("v1", "ServiceAccount", "merlin-system", "merlin-k8s"));
        Assert.NotNull(Api.Get<V1ClusterRole>("rbac.authorization.k8s.io/v1", "ClusterRole", null, "merlin-k8s"));
        Assert.NotNull(Api.Get<V1ClusterRoleBinding>("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", null, "merlin-k8s"));
        Assert.NotNull(Api.Get<V1Role>("rbac.authorization.k8s.io/v1", "Role", "merlin-system", "merlin-k8s-leader-election"));
        Assert.NotNull(Api.Get<V1RoleBinding>("rbac.authorization.k8s.io/v1", "RoleBinding", "merlin-system", "merlin-k8s-leader-election"));
        Assert.NotNull(Api.Get<V1Deployment>("apps/v1", "Deployment", "merlin-system", "merlin-k8s"));

        // The example pools, read as the controller reads them, parse with its own parser.
        var pool = Api.Get<V1IPPool>("merlin.io/v1", "IPPool", null, "default")!;
        var reserved = Api.Get<V1IPPool>("merlin.io/v1", "IPPool", null, "reserved")!;
        Assert.Equal(["198.18.100.0/24"], pool.Spec.Addresses!);
        Assert.True(IpPool.Parse(pool.Metadata.Name, pool.Spec, out var error)?.AutoAssign, error);
        Assert.Equal(256L, IpPool.Parse(pool.Metadata.Name, pool.Spec, out _)!.Ranges.Sum(r => r.Count)); // a /24
        Assert.False(IpPool.Parse(reserved.Metadata.Name, reserved.Spec, out error)?.AutoAssign ?? true, error);

        // The CRD's schema accepts the example pools as they are stored (the test server validates no schema, so it is
        // checked here: types, required fields, minItems, enums, patterns, no unknown fields).
        var specSchema = SchemaOf("spec");
        using (var stored = JsonDocument.Parse(await KubectlAsync("get", "ippools", "-o", "json")))
        {
            var items = stored.RootElement.GetProperty("items").EnumerateArray().ToList();
            Assert.Equal(2, items.Count);
            foreach (var item in items) Assert.Empty(Violations(item.GetProperty("spec"), specSchema, "spec"));
        }

        var pools = await KubectlAsync("get", "ippools");
        Assert.Matches(@"(?m)^NAME\s+ADDRESSES\s+TOTAL\s+USED\s+FREE\s+AGE\s*$", pools);
        Assert.Matches(@"(?m)^default\s+\[""198\.18\.100\.0/24""\]", pools);
        Assert.Matches(@"(?m)^reserved\s", pools);

        // The example Service is one the controller serves, and parses without complaint.
        var yaml = await KubectlAsync("get", "svc", "-n", "default", "web", "-o", "yaml");
        Assert.Contains($"loadBalancerClass: {Annotations.LoadBalancerClass}", yaml);
        Assert.Contains("externalTrafficPolicy: Local", yaml);
        var svc = Api.Get<V1Service>("v1", "Service", "default", "web")!;
        Assert.True(ServiceIntent.Qualifies(svc, defaultClass: false));
        var intent = ServiceIntent.Parse(svc, out var invalid);
        Assert.True(intent is not null, invalid?.ToString());
        Assert.True(intent.LocalTraffic);
        Assert.Equal((ushort)80, intent.Ports.Single().Port);
        Assert.Equal("8080", svc.Spec.Ports.Single().TargetPort.Value);

        var reapplied = await KubectlAsync("apply", "-f", Deploy);
        Assert.DoesNotContain(" created", reapplied);
        Assert.DoesNotContain(" configured", reapplied);
    }

    [Fact]
    public async Task The_Deployment_runs_two_hardened_replicas_whose_args_the_controller_accepts()
    {
        await ApplyAllAsync();
        var deployment = Api.Get<V1Deployment>("apps/v1", "Deployment", "merlin-system", "merlin-k8s")!;
        var pod = deployment.Spec.Template.Spec;
        var container = pod.Containers.Single();
        Assert.Equal(2, deployment.Spec.Replicas);
        Assert.Equal("merlin-k8s", pod.ServiceAccountName);
        Assert.Equal("merlin-k8s:latest", container.Image);
        Assert.Contains("--merlin-api=198.18.0.1:4282", container.Args);

        // The args as shipped pass the controller's own flag parsing and checks.
        var commandLine = new ControllerCommandLine();
        var parsed = commandLine.Root.Parse([.. container.Args]);
        Assert.Empty(parsed.Errors);
        var invocation = commandLine.Bind(parsed, out var error);
        Assert.True(invocation is not null, error);
        Assert.Equal(("198.18.0.1", (ushort)4282), (invocation.Merlin.Host, invocation.Merlin.Port));
        Assert.Equal(8080, invocation.Listen.Port);

        Assert.Equal(["metadata.name", "metadata.namespace"], container.Env.Where(e => e.Name is "POD_NAME" or "POD_NAMESPACE").OrderBy(e => e.Name).Select(e => e.ValueFrom.FieldRef.FieldPath));
        var port = container.Ports.Single();
        Assert.Equal(("metrics", 8080), (port.Name, port.ContainerPort));
        Assert.Equal(("/readyz", "metrics"), (container.ReadinessProbe.HttpGet.Path, container.ReadinessProbe.HttpGet.Port.Value));
        Assert.Equal(("/healthz", "metrics"), (container.LivenessProbe.HttpGet.Path, container.LivenessProbe.HttpGet.Port.Value));
        Assert.Equal("50m", container.Resources.Requests["cpu"].ToString());
        Assert.Equal("64Mi", container.Resources.Requests["memory"].ToString());
        Assert.Equal("256Mi", container.Resources.Limits["memory"].ToString());
        Assert.True(pod.SecurityContext.RunAsNonRoot);
        Assert.True(container.SecurityContext.ReadOnlyRootFilesystem);
        Assert.False(container.SecurityContext.AllowPrivilegeEscalation);
        Assert.Equal(["ALL"], container.SecurityContext.Capabilities.Drop);
        Assert.Null(container.SecurityContext.Capabilities.Add);
        var credentials = pod.Volumes.Single(v => v.Secret is not null);
        Assert.True(credentials.Secret.Optional);
        Assert.Contains(container.VolumeMounts, m => m.Name == credentials.Name && m.ReadOnlyProperty == true);
        var spread = pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution.Single().PodAffinityTerm;
        Assert.Equal("kubernetes.io/hostname", spread.TopologyKey);
        Assert.Equal(deployment.Spec.Selector.MatchLabels, spread.LabelSelector.MatchLabels);
    }

    [Fact]
    public async Task The_CRD_schema_names_exactly_the_fields_of_V1IPPoolSpec_and_V1IPPoolStatus()
    {
        await KubectlAsync("apply", "-f", File("crd-ippool.yaml"));
        var crd = Api.Get<V1CustomResourceDefinition>("apiextensions.k8s.io/v1", "CustomResourceDefinition", null, "ippools.merlin.io")!;
        Assert.Equal((V1IPPool.Group, "Cluster", V1IPPool.Plural, V1IPPool.KindName), (crd.Spec.Group, crd.Spec.Scope, crd.Spec.Names.Plural, crd.Spec.Names.Kind));
        var version = crd.Spec.Versions.Single();
        Assert.Equal(V1IPPool.Version, version.Name);
        Assert.True(version.Served && version.Storage);
        Assert.NotNull(version.Subresources?.Status);
        Assert.Equal(["Addresses", "Total", "Used", "Free", "Age"], version.AdditionalPrinterColumns.Select(c => c.Name));

        var schema = version.Schema.OpenAPIV3Schema;
        var spec = schema.Properties["spec"];
        var status = schema.Properties["status"];
        Assert.Equal(JsonNames<V1IPPoolSpec>(), spec.Properties.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(JsonNames<V1IPPoolStatus>(), status.Properties.Keys.Order(StringComparer.Ordinal));

        Assert.Equal(("array", "string", 1L), (spec.Properties["addresses"].Type, Schema(spec.Properties["addresses"].Items).Type, spec.Properties["addresses"].MinItems));
        Assert.Equal(("boolean", "true"), (spec.Properties["autoAssign"].Type, spec.Properties["autoAssign"].DefaultProperty?.ToString()?.ToLowerInvariant()));
        Assert.Equal(("boolean", "false"), (spec.Properties["avoidBuggyIPs"].Type, spec.Properties["avoidBuggyIPs"].DefaultProperty?.ToString()?.ToLowerInvariant()));
        var expressions = Schema(spec.Properties["serviceSelector"].Properties["matchExpressions"].Items);
        Assert.Equal(["DoesNotExist", "Exists", "In", "NotIn"], expressions.Properties["operator"].EnumProperty.Select(o => o.ToString()!).Order(StringComparer.Ordinal));
        Assert.Equal(["key", "operator", "values"], expressions.Properties.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("string", Schema(spec.Properties["serviceSelector"].Properties["matchLabels"].AdditionalProperties).Type);
        foreach (var count in new[] { "total", "used", "free" })
            Assert.Equal(("integer", "int64"), (status.Properties[count].Type, status.Properties[count].Format));
        var condition = Schema(status.Properties["conditions"].Items);
        Assert.Equal(["lastTransitionTime", "message", "observedGeneration", "reason", "status", "type"], condition.Properties.Keys.Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task The_CRD_schema_accepts_the_status_the_controller_writes_and_refuses_bad_specs()
    {
        await KubectlAsync("apply", "-f", File("crd-ippool.yaml"));
        // As ServiceController.WritePoolStatusAsync writes it (a merge patch of .status).
        var status = new V1IPPoolStatus
        {
            Total = 256, Used = 3, Free = 253,
            Conditions =
            [
                new V1Condition { Type = "Valid", Status = "True", Reason = "Parsed", Message = "1 ranges", LastTransitionTime = DateTime.UtcNow },
                new V1Condition { Type = "Overlapping", Status = "True", Reason = "OverlapsOtherPools", Message = "shares addresses with b", LastTransitionTime = DateTime.UtcNow },
            ],
        };
        using var written = JsonDocument.Parse(KubernetesJson.Serialize(status));
        Assert.Empty(Violations(written.RootElement, SchemaOf("status"), "status"));

        using var bad = JsonDocument.Parse("""
            {"addresses": [], "autoAssign": "yes", "color": "blue",
             "serviceSelector": {"matchLabels": {"tier": 1}, "matchExpressions": [{"key": "a", "operator": "Equals"}, {"operator": "In"}]}}
            """);
        Assert.Equal(
            [
                "spec.addresses: 0 items, fewer than 1",
                "spec.autoAssign: string, not boolean",
                "spec.color: unknown field",
                "spec.serviceSelector.matchExpressions[0].operator: \"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
                "spec.serviceSelector.matchExpressions[1]: required field key is missing",
                "spec.serviceSelector.matchLabels.tier: integer, not string",
            ],
            Violations(bad.RootElement, SchemaOf("spec"), "spec").Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task RBAC_grants_exactly_the_calls_the_controller_makes_and_no_wildcard()
    {
        await ApplyAllAsync();
        var role = Api.Get<V1ClusterRole>("rbac.authorization.k8s.io/v1", "ClusterRole", null, "merlin-k8s")!;
        var granted = Grants(role.Rules);
        string[] read = ["get", "list", "watch"];
        var expected = new SortedSet<string>(StringComparer.Ordinal);
        void Allow(string group, string resource, params string[] verbs) { foreach (var v in verbs) expected.Add($"{group}|{resource}|{v}"); }
        Allow("", "services", [.. read, "patch"]);
        Allow("", "services/status", "patch");
        Allow("", "nodes", read);
        Allow("discovery.k8s.io", "endpointslices", read);
        Allow(V1IPPool.Group, V1IPPool.Plural, read);
        Allow(V1IPPool.Group, $"{V1IPPool.Plural}/status", "patch");
        Allow("", "events", "create", "patch");
        Assert.Equal(expected, granted);
        Assert.All(role.Rules, r => Assert.True(r.NonResourceURLs is null or { Count: 0 } && r.ResourceNames is null or { Count: 0 }));
        Assert.Null(role.AggregationRule);

        var leases = Api.Get<V1Role>("rbac.authorization.k8s.io/v1", "Role", "merlin-system", "merlin-k8s-leader-election")!;
        Assert.Equal(["coordination.k8s.io|leases|create", "coordination.k8s.io|leases|get", "coordination.k8s.io|leases|update"], Grants(leases.Rules));

        var clusterBinding = Api.Get<V1ClusterRoleBinding>("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", null, "merlin-k8s")!;
        var binding = Api.Get<V1RoleBinding>("rbac.authorization.k8s.io/v1", "RoleBinding", "merlin-system", "merlin-k8s-leader-election")!;
        Assert.Equal(("ClusterRole", "merlin-k8s"), (clusterBinding.RoleRef.Kind, clusterBinding.RoleRef.Name));
        Assert.Equal(("Role", "merlin-k8s-leader-election"), (binding.RoleRef.Kind, binding.RoleRef.Name));
        foreach (var subject in clusterBinding.Subjects.Concat(binding.Subjects))
            Assert.Equal(("ServiceAccount", "merlin-k8s", "merlin-system"), (subject.Kind, subject.Name, subject.NamespaceProperty));
        Assert.Single(clusterBinding.Subjects);
        Assert.Single(binding.Subjects);
        Assert.NotNull(Api.Get<V1ServiceAccount>("v1", "ServiceAccount", "merlin-system", "merlin-k8s"));
    }

    // Every (apiGroup, resource, verb) a rule list grants, with no wildcard allowed anywhere.
    private static SortedSet<string> Grants(IEnumerable<V1PolicyRule> rules)
    {
        var grants = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var r in rules)
        {
            Assert.DoesNotContain("*", r.ApiGroups ?? []);
            Assert.DoesNotContain("*", r.Resources ?? []);
            Assert.DoesNotContain("*", r.Verbs ?? []);
            Assert.DoesNotContain(r.Resources ?? [], res => res.Contains('*', StringComparison.Ordinal));
            foreach (var g in r.ApiGroups ?? [])
                foreach (var res in r.Resources ?? [])
                    foreach (var v in r.Verbs ?? [])
                        grants.Add($"{g}|{res}|{v}");
        }
        return grants;
    }

    // The model types some schema fields (items, additionalProperties) as object: a JsonElement when read from JSON.
    private static V1JSONSchemaProps Schema(object? node) => node switch
    {
        V1JSONSchemaProps props => props,
        JsonElement json => KubernetesJson.Deserialize<V1JSONSchemaProps>(json.GetRawText()),
        _ => throw new InvalidOperationException($"not a schema: {node}"),
    };

    private V1JSONSchemaProps SchemaOf(string property)
    {
        var crd = Api.Get<V1CustomResourceDefinition>("apiextensions.k8s.io/v1", "CustomResourceDefinition", null, "ippools.merlin.io")!;
        return crd.Spec.Versions.Single().Schema.OpenAPIV3Schema.Properties[property];
    }

    /// <summary>What a structural-schema check would refuse in <paramref name="value"/>: the subset of OpenAPI v3 the
    /// CRD uses (type, format-free integers, required, properties, additionalProperties, items, minItems, enum,
    /// minLength, maxLength, pattern). A null is treated as absent, as the API server prunes nulls of non-nullable fields.</summary>
    private static IEnumerable<string> Violations(JsonElement value, V1JSONSchemaProps schema, string path)
    {
        var type = value.ValueKind switch
        {
            JsonValueKind.Object => "object",
            JsonValueKind.Array => "array",
            JsonValueKind.String => "string",
            JsonValueKind.True or JsonValueKind.False => "boolean",
            JsonValueKind.Number => value.TryGetInt64(out _) ? "integer" : "number",
            _ => "null",
        };
        if (type == "null") yield break;
        if (schema.Type is { } want && want != type && !(want == "number" && type == "integer"))
        {
            yield return $"{path}: {type}, not {want}";
            yield break;
        }
        if (schema.EnumProperty is { Count: > 0 } allowed && !allowed.Any(a => a.ToString() == value.ToString()))
            yield return $"{path}: \"{value}\" is not one of {string.Join(", ", allowed)}";
        switch (type)
        {
            case "string":
                var text = value.GetString()!;
                if (text.Length < (schema.MinLength ?? 0)) yield return $"{path}: shorter than {schema.MinLength}";
                if (schema.MaxLength is { } max && text.Length > max) yield return $"{path}: longer than {max}";
                if (schema.Pattern is { } pattern && !System.Text.RegularExpressions.Regex.IsMatch(text, pattern)) yield return $"{path}: \"{text}\" does not match {pattern}";
                break;
            case "array":
                var elements = value.EnumerateArray().ToList();
                if (elements.Count < (schema.MinItems ?? 0)) yield return $"{path}: {elements.Count} items, fewer than {schema.MinItems}";
                for (var i = 0; i < elements.Count && schema.Items is not null; i++)
                    foreach (var v in Violations(elements[i], Schema(schema.Items), $"{path}[{i}]")) yield return v;
                break;
            case "object":
                foreach (var name in schema.Required ?? [])
                    if (!value.TryGetProperty(name, out var present) || present.ValueKind == JsonValueKind.Null) yield return $"{path}: required field {name} is missing";
                foreach (var field in value.EnumerateObject())
                {
                    var inner = schema.Properties?.TryGetValue(field.Name, out var known) == true ? known
                        : schema.AdditionalProperties is JsonElement { ValueKind: JsonValueKind.Object } or V1JSONSchemaProps ? Schema(schema.AdditionalProperties)
                        : null;
                    if (inner is not null)
                        foreach (var v in Violations(field.Value, inner, $"{path}.{field.Name}")) yield return v;
                    else if (schema.XKubernetesPreserveUnknownFields != true)
                        yield return $"{path}.{field.Name}: unknown field";
                }
                break;
        }
    }

    private static string[] JsonNames<T>() =>
        [.. typeof(T).GetProperties().Select(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()!.Name).Order(StringComparer.Ordinal)];

    private async Task ApplyAllAsync()
    {
        await KubectlAsync("apply", "-f", File("namespace.yaml"));
        await KubectlAsync("apply", "-f", File("crd-ippool.yaml"));
        await KubectlAsync("apply", "-f", Deploy);
    }

    private static string File(string name) => Path.Combine(Deploy, name);

    /// <summary>Runs the machine's kubectl against the test server (the library's runner) and asserts it succeeded; returns stdout.</summary>
    private Task<string> KubectlAsync(params string[] args) => Kubectl.OkAsync(args);
}
