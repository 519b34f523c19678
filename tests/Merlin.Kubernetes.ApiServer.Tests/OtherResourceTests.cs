using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>EndpointSlices, Nodes and Events as the controller reads and writes them; patch preconditions; bounded history.</summary>
public sealed class OtherResourceTests : ServerTestBase
{
    static V1EndpointSlice Slice(string name, string service, params string[] nodes) => new()
    {
        ApiVersion = "discovery.k8s.io/v1", Kind = "EndpointSlice",
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default", Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = service } },
        AddressType = "IPv4",
        Endpoints = [.. nodes.Select((n, i) => new V1Endpoint { Addresses = [$"10.1.0.{i + 1}"], NodeName = n, Conditions = new V1EndpointConditions { Ready = true } })],
        Ports = [new Discoveryv1EndpointPort { Port = 8080, Protocol = "TCP" }],
    };

    [Fact]
    public async Task EndpointSlices_are_listed_and_watched_by_service_label()
    {
        _server.Put(Slice("web-abc", "web", "n1", "n2"));
        _server.Put(Slice("db-xyz", "db", "n1"));
        var list = await _client.ListEndpointSliceForAllNamespacesAsync(labelSelector: "kubernetes.io/service-name=web", cancellationToken: Ct);
        Assert.Equal(["n1", "n2"], list.Items.Single().Endpoints.Select(e => e.NodeName));

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        var watching = Task.Run(async () =>
        {
            await foreach (var (type, slice) in _client.WatchListEndpointSliceForAllNamespacesAsync(labelSelector: "kubernetes.io/service-name=web",
                               resourceVersion: list.Metadata.ResourceVersion, cancellationToken: cts.Token))
                return (type, slice.Endpoints.Count);
            return default;
        }, Ct);
        _server.Put(Slice("db-xyz", "db", "n3"));
        _server.Put(Slice("web-abc", "web", "n1", "n2", "n3"));
        Assert.Equal((WatchEventType.Modified, 3), await watching);
    }

    [Fact]
    public async Task Nodes_status_and_events()
    {
        await _client.CreateNodeAsync(new V1Node { Metadata = new V1ObjectMeta { Name = "n1" }, Status = new V1NodeStatus { Addresses = [new V1NodeAddress { Type = "InternalIP", Address = "192.0.2.10" }] } }, cancellationToken: Ct);
        Assert.Equal("192.0.2.10", (await _client.ReadNodeAsync("n1", cancellationToken: Ct)).Status.Addresses.Single().Address); // a node keeps status on create
        await _client.PatchNodeAsync(new V1Patch("""{"spec":{"unschedulable":true}}""", V1Patch.PatchType.StrategicMergePatch), "n1", cancellationToken: Ct);
        Assert.True((await _client.ReadNodeAsync("n1", cancellationToken: Ct)).Spec.Unschedulable);

        await _client.CoreV1.CreateNamespacedEventAsync(new Corev1Event
        {
            Metadata = new V1ObjectMeta { GenerateName = "web." },
            InvolvedObject = new V1ObjectReference { Kind = "Service", Name = "web", NamespaceProperty = "default" },
            Reason = "AddressNotInPool", Message = "198.18.200.9 is outside every IPPool", Type = "Warning",
        }, "default", cancellationToken: Ct);
        await _client.EventsV1.CreateNamespacedEventAsync(new Eventsv1Event
        {
            Metadata = new V1ObjectMeta { GenerateName = "web." },
            Regarding = new V1ObjectReference { Kind = "Service", Name = "web", NamespaceProperty = "default" },
            Reason = "AddressNotInPool", Note = "198.18.200.9 is outside every IPPool", Type = "Warning", Action = "Allocate",
            EventTime = DateTime.UtcNow, ReportingController = "merlin.io/lb", ReportingInstance = "a",
        }, "default", cancellationToken: Ct);
        Assert.Equal("AddressNotInPool", (await _client.CoreV1.ListNamespacedEventAsync("default", fieldSelector: "involvedObject.name=web", cancellationToken: Ct)).Items.Single().Reason);
        Assert.Single((await _client.EventsV1.ListNamespacedEventAsync("default", cancellationToken: Ct)).Items);
    }

    [Fact]
    public async Task A_merge_patch_carrying_a_stale_resourceVersion_is_a_Conflict()
    {
        var node = await _client.CreateNodeAsync(new V1Node { Metadata = new V1ObjectMeta { Name = "n1" } }, cancellationToken: Ct);
        await _client.PatchNodeAsync(new V1Patch("""{"metadata":{"labels":{"a":"1"}}}""", V1Patch.PatchType.MergePatch), "n1", cancellationToken: Ct);
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.PatchNodeAsync(
            new V1Patch("{\"metadata\":{\"resourceVersion\":\"" + node.Metadata.ResourceVersion + "\",\"labels\":{\"a\":\"2\"}}}", V1Patch.PatchType.MergePatch), "n1", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, e.Response.StatusCode);
    }

    [Fact]
    public async Task Unsupported_patch_types_and_unknown_paths_are_Status_errors()
    {
        using var http = new HttpClient { BaseAddress = _server.Url };
        using var patch = new HttpRequestMessage(HttpMethod.Patch, "/api/v1/namespaces/default")
        {
            Content = new StringContent("{}", System.Text.Encoding.UTF8, "application/xml"),
        };
        var response = await http.SendAsync(patch, Ct);
        Assert.Equal(System.Net.HttpStatusCode.UnsupportedMediaType, response.StatusCode);
        Assert.Equal("UnsupportedMediaType", KubernetesJson.Deserialize<V1Status>(await response.Content.ReadAsStringAsync(Ct)).Reason);

        var unknown = await http.GetAsync("/apis/nope.io/v1/things", Ct);
        Assert.Equal(System.Net.HttpStatusCode.NotFound, unknown.StatusCode);
        var put = await http.PostAsync("/api/v1/namespaces/default/services/x", new StringContent("{}"), Ct);
        Assert.Equal(System.Net.HttpStatusCode.MethodNotAllowed, put.StatusCode);
    }
}
