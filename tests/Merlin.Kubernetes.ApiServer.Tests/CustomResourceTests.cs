using System.Text.Json.Serialization;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>The controller's IPPool model, as a test would write it.</summary>
public sealed class IPPool : IKubernetesObject<V1ObjectMeta>
{
    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = "merlin.io/v1";
    [JsonPropertyName("kind")] public string Kind { get; set; } = "IPPool";
    [JsonPropertyName("metadata")] public V1ObjectMeta Metadata { get; set; } = new();
    [JsonPropertyName("spec")] public PoolSpec? Spec { get; set; }
    [JsonPropertyName("status")] public PoolStatus? Status { get; set; }

    public sealed class PoolSpec
    {
        [JsonPropertyName("cidrs")] public List<string> Cidrs { get; set; } = [];
    }

    public sealed class PoolStatus
    {
        [JsonPropertyName("allocated")] public int Allocated { get; set; }
    }
}

/// <summary>CRDs: creating one serves its group, version and plural, with the status subresource it declares.</summary>
public sealed class CustomResourceTests : ServerTestBase
{
    static V1CustomResourceDefinition Crd(string scope = "Cluster", string plural = "ippools", string kind = "IPPool") => new()
    {
        Metadata = new V1ObjectMeta { Name = $"{plural}.merlin.io" },
        Spec = new V1CustomResourceDefinitionSpec
        {
            Group = "merlin.io",
            Scope = scope,
            Names = new V1CustomResourceDefinitionNames { Plural = plural, Singular = kind.ToLowerInvariant(), Kind = kind, ListKind = kind + "List" },
            Versions =
            [
                new V1CustomResourceDefinitionVersion
                {
                    Name = "v1", Served = true, Storage = true,
                    Subresources = new V1CustomResourceSubresources { Status = new object() },
                    Schema = new V1CustomResourceValidation { OpenAPIV3Schema = new V1JSONSchemaProps { Type = "object", XKubernetesPreserveUnknownFields = true } },
                },
            ],
        },
    };

    static IPPool Pool(string name, params string[] cidrs) => new()
    {
        Metadata = new V1ObjectMeta { Name = name },
        Spec = new IPPool.PoolSpec { Cidrs = [.. cidrs] },
        Status = new IPPool.PoolStatus { Allocated = 7 },
    };

    [Fact]
    public async Task A_created_CRD_is_established_and_discoverable()
    {
        var unknown = await Assert.ThrowsAsync<HttpOperationException>(() => _client.CustomObjects.ListClusterCustomObjectAsync("merlin.io", "v1", "ippools", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, unknown.Response.StatusCode);

        var crd = await _client.CreateCustomResourceDefinitionAsync(Crd(), cancellationToken: Ct);
        Assert.Contains(crd.Status.Conditions, c => c.Type == "Established" && c.Status == "True");
        Assert.Contains((await ((IApisOperations)_client).GetAPIVersionsAsync(Ct)).Groups, g => g.Name == "merlin.io");
        using var http = new HttpClient { BaseAddress = _server.Url };
        var resources = KubernetesJson.Deserialize<V1APIResourceList>(await http.GetStringAsync("/apis/merlin.io/v1", Ct));
        Assert.Equal(["ippools", "ippools/status"], resources.Resources.Select(r => r.Name));
        Assert.False(resources.Resources[0].Namespaced);
    }

    [Fact]
    public async Task Custom_objects_have_a_status_subresource_and_a_generation()
    {
        await _client.CreateCustomResourceDefinitionAsync(Crd(), cancellationToken: Ct);
        var created = await _client.CustomObjects.CreateClusterCustomObjectAsync<IPPool>(Pool("default", "192.0.2.0/28"), "merlin.io", "v1", "ippools", cancellationToken: Ct);
        Assert.Null(created.Status); // dropped on create: the status subresource owns it
        Assert.Equal(1, created.Metadata.Generation);

        var withStatus = await _client.CustomObjects.PatchClusterCustomObjectStatusAsync<IPPool>(
            new V1Patch("""{"status":{"allocated":3},"spec":{"cidrs":[]}}""", V1Patch.PatchType.MergePatch), "merlin.io", "v1", "ippools", "default", cancellationToken: Ct);
        Assert.Equal(3, withStatus.Status!.Allocated);
        Assert.Equal(["192.0.2.0/28"], withStatus.Spec!.Cidrs);
        Assert.Equal(1, withStatus.Metadata.Generation);

        withStatus.Spec.Cidrs.Add("198.51.100.0/28");
        withStatus.Status.Allocated = 99;
        var replaced = await _client.CustomObjects.ReplaceClusterCustomObjectAsync<IPPool>(withStatus, "merlin.io", "v1", "ippools", "default", cancellationToken: Ct);
        Assert.Equal(2, replaced.Spec!.Cidrs.Count);
        Assert.Equal(3, replaced.Status!.Allocated);
        Assert.Equal(2, replaced.Metadata.Generation);

        Assert.Equal(3, _server.Get<IPPool>("merlin.io/v1", "IPPool", null, "default")!.Status!.Allocated);
        var put = _server.Put(Pool("other", "203.0.113.0/28"));
        Assert.Equal(7, put.Status!.Allocated); // direct writes keep status
    }

    [Fact]
    public async Task Custom_objects_can_be_watched_and_go_with_their_CRD()
    {
        await _client.CreateCustomResourceDefinitionAsync(Crd(), cancellationToken: Ct);
        await _client.CustomObjects.CreateClusterCustomObjectAsync<IPPool>(Pool("a", "192.0.2.0/28"), "merlin.io", "v1", "ippools", cancellationToken: Ct);
        var rv = _server.ResourceVersion.ToString();

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        var seen = new List<(WatchEventType, string)>();
        var watching = Task.Run(async () =>
        {
            await foreach (var (type, obj) in _client.CustomObjects.WatchListClusterCustomObjectAsync("merlin.io", "v1", "ippools", resourceVersion: rv, cancellationToken: cts.Token))
            {
                var pool = KubernetesJson.Deserialize<IPPool>(KubernetesJson.Serialize(obj));
                seen.Add((type, pool.Metadata.Name));
                if (seen.Count == 3) break;
            }
        }, Ct);
        await _client.CustomObjects.CreateClusterCustomObjectAsync<IPPool>(Pool("b", "198.51.100.0/28"), "merlin.io", "v1", "ippools", cancellationToken: Ct);
        await _client.DeleteCustomResourceDefinitionAsync("ippools.merlin.io", cancellationToken: Ct);
        await watching;
        Assert.Equal(WatchEventType.Added, seen[0].Item1);
        Assert.Equal("b", seen[0].Item2);
        Assert.Equal([(WatchEventType.Deleted, "a"), (WatchEventType.Deleted, "b")], seen.Skip(1).Order());

        for (var i = 0; i < 100 && _server.Get<V1CustomResourceDefinition>("apiextensions.k8s.io/v1", "CustomResourceDefinition", null, "ippools.merlin.io") is not null; i++)
            await Task.Delay(50, Ct);
        var gone = await Assert.ThrowsAsync<HttpOperationException>(() => _client.CustomObjects.ListClusterCustomObjectAsync("merlin.io", "v1", "ippools", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, gone.Response.StatusCode);
    }

    [Fact]
    public async Task A_namespaced_CRD_is_served_under_namespaces()
    {
        await _client.CreateCustomResourceDefinitionAsync(Crd("Namespaced", "ipclaims", "IPClaim"), cancellationToken: Ct);
        var body = new Dictionary<string, object> { ["apiVersion"] = "merlin.io/v1", ["kind"] = "IPClaim", ["metadata"] = new Dictionary<string, object> { ["name"] = "c" } };
        await _client.CustomObjects.CreateNamespacedCustomObjectAsync(body, "merlin.io", "v1", "default", "ipclaims", cancellationToken: Ct);
        using var http = new HttpClient { BaseAddress = _server.Url };
        Assert.Contains("\"namespace\":\"default\"", await http.GetStringAsync("/apis/merlin.io/v1/namespaces/default/ipclaims/c", Ct));
        Assert.Contains("\"name\":\"c\"", await http.GetStringAsync("/apis/merlin.io/v1/ipclaims", Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, (await http.GetAsync("/apis/merlin.io/v1/ipclaims/c", Ct)).StatusCode);
    }
}
