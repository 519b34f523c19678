using k8s;
using k8s.Autorest;
using k8s.Models;
using Merlin.Testing;

namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>The official C# client against the test server: CRUD, lists, watches, 410 Gone, status, patches, finalizers.</summary>
public sealed class ServiceTests : ServerTestBase
{
    static V1Service Service(string name, params (string Key, string Value)[] labels) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = labels.ToDictionary(l => l.Key, l => l.Value) },
        Spec = new V1ServiceSpec
        {
            Type = "LoadBalancer",
            LoadBalancerClass = "merlin.io/lb",
            Ports = [new V1ServicePort { Port = 80, Protocol = "TCP" }],
        },
    };

    [Fact]
    public async Task Create_sets_server_fields_and_refuses_a_duplicate()
    {
        var created = await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);

        Assert.Equal("default", created.Metadata.NamespaceProperty);
        Assert.False(string.IsNullOrEmpty(created.Metadata.Uid));
        Assert.NotNull(created.Metadata.CreationTimestamp);
        Assert.Equal(1, created.Metadata.Generation);
        Assert.Equal(_server.ResourceVersion.ToString(), created.Metadata.ResourceVersion);
        var dup = await Assert.ThrowsAsync<HttpOperationException>(() => _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, dup.Response.StatusCode);
        Assert.Contains("\"reason\":\"AlreadyExists\"", dup.Response.Content);
    }

    [Fact]
    public async Task Services_are_defaulted_and_keep_their_allocations()
    {
        var created = await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);
        Assert.StartsWith("198.19.128.", created.Spec.ClusterIP);
        Assert.Equal([created.Spec.ClusterIP], created.Spec.ClusterIPs);
        Assert.Equal(["IPv4"], created.Spec.IpFamilies);
        Assert.Equal(("SingleStack", "Cluster", "Cluster", "None"), (created.Spec.IpFamilyPolicy, created.Spec.ExternalTrafficPolicy, created.Spec.InternalTrafficPolicy, created.Spec.SessionAffinity));
        Assert.True(created.Spec.AllocateLoadBalancerNodePorts);
        var port = created.Spec.Ports.Single();
        Assert.InRange(port.NodePort!.Value, 30000, 32767);
        Assert.Equal("80", port.TargetPort.Value);

        // A replace that leaves the allocated fields out keeps them; ETP Local adds a health-check node port.
        var replacement = Service("web");
        replacement.Spec.ExternalTrafficPolicy = "Local";
        var replaced = await _client.ReplaceNamespacedServiceAsync(replacement, "web", "default", cancellationToken: Ct);
        Assert.Equal(created.Spec.ClusterIP, replaced.Spec.ClusterIP);
        Assert.Equal(port.NodePort, replaced.Spec.Ports.Single().NodePort);
        Assert.InRange(replaced.Spec.HealthCheckNodePort!.Value, 30000, 32767);

        var other = await _client.CreateNamespacedServiceAsync(Service("other"), "default", cancellationToken: Ct);
        Assert.NotEqual(created.Spec.ClusterIP, other.Spec.ClusterIP);
        Assert.NotEqual(port.NodePort, other.Spec.Ports.Single().NodePort);
    }

    [Fact]
    public async Task GenerateName_makes_a_unique_name()
    {
        var svc = Service("");
        svc.Metadata.Name = null;
        svc.Metadata.GenerateName = "web-";
        var a = await _client.CreateNamespacedServiceAsync(svc, "default", cancellationToken: Ct);
        var b = await _client.CreateNamespacedServiceAsync(svc, "default", cancellationToken: Ct);
        Assert.StartsWith("web-", a.Metadata.Name);
        Assert.NotEqual(a.Metadata.Name, b.Metadata.Name);
    }

    [Fact]
    public async Task Get_of_a_missing_object_is_a_NotFound_status()
    {
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.ReadNamespacedServiceAsync("nope", "default", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, e.Response.StatusCode);
        var status = KubernetesJson.Deserialize<V1Status>(e.Response.Content);
        Assert.Equal(("Status", "Failure", "NotFound", 404), (status.Kind, status.Status, status.Reason, status.Code!.Value));
    }

    [Fact]
    public async Task Create_in_a_missing_namespace_is_NotFound()
    {
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.CreateNamespacedServiceAsync(Service("web"), "absent", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, e.Response.StatusCode);
    }

    [Fact]
    public async Task List_filters_by_labels_and_fields_and_carries_the_resourceVersion()
    {
        await _client.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = "other" } }, cancellationToken: Ct);
        await _client.CreateNamespacedServiceAsync(Service("a", ("tier", "web"), ("env", "prod")), "default", cancellationToken: Ct);
        await _client.CreateNamespacedServiceAsync(Service("b", ("tier", "db")), "default", cancellationToken: Ct);
        await _client.CreateNamespacedServiceAsync(Service("c", ("tier", "web")), "other", cancellationToken: Ct);

        async Task<string[]> Names(string? labels = null, string? fields = null) =>
            (await _client.ListServiceForAllNamespacesAsync(labelSelector: labels, fieldSelector: fields, cancellationToken: Ct))
            .Items.Select(s => $"{s.Metadata.NamespaceProperty}/{s.Metadata.Name}").Order().ToArray();

        Assert.Equal(["default/a", "default/b", "other/c"], await Names());
        Assert.Equal(["default/a", "other/c"], await Names("tier=web"));
        Assert.Equal(["default/a", "other/c"], await Names("tier==web"));
        Assert.Equal(["default/b"], await Names("tier!=web"));
        Assert.Equal(["default/a", "default/b"], await Names("tier in (web, db),tier notin (x)", "metadata.namespace=default"));
        Assert.Equal(["default/b", "other/c"], await Names("!env"));
        Assert.Equal(["default/a"], await Names("env"));
        Assert.Equal(["other/c"], await Names(fields: "metadata.name=c"));
        Assert.Equal(["default/a", "default/b"], await Names(fields: "metadata.namespace!=other"));

        var list = await _client.ListNamespacedServiceAsync("default", cancellationToken: Ct);
        Assert.Equal(_server.ResourceVersion.ToString(), list.Metadata.ResourceVersion);
        Assert.Null(list.Metadata.ContinueProperty);
    }

    [Fact]
    public async Task Watch_sees_added_modified_deleted_in_order()
    {
        var list = await _client.ListNamespacedServiceAsync("default", cancellationToken: Ct);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        var events = new List<(WatchEventType, string, string)>();
        var watching = Task.Run(async () =>
        {
            await foreach (var (type, svc) in _client.WatchListNamespacedServiceAsync("default",
                               resourceVersion: list.Metadata.ResourceVersion, cancellationToken: cts.Token))
            {
                events.Add((type, svc.Metadata.Name, svc.Metadata.ResourceVersion));
                if (type == WatchEventType.Deleted) break;
            }
        }, Ct);

        var created = await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);
        created.Metadata.Labels = new Dictionary<string, string> { ["x"] = "y" };
        var replaced = await _client.ReplaceNamespacedServiceAsync(created, "web", "default", cancellationToken: Ct);
        await _client.DeleteNamespacedServiceAsync("web", "default", cancellationToken: Ct);
        await watching;

        Assert.Equal([WatchEventType.Added, WatchEventType.Modified, WatchEventType.Deleted], events.Select(e => e.Item1));
        Assert.All(events, e => Assert.Equal("web", e.Item2));
        Assert.Equal(created.Metadata.ResourceVersion, events[0].Item3);
        Assert.Equal(replaced.Metadata.ResourceVersion, events[1].Item3);
        Assert.Equal(_server.ResourceVersion.ToString(), events[2].Item3);
    }

    [Fact]
    public async Task Watch_from_zero_starts_with_the_current_objects_and_applies_selectors()
    {
        await _client.CreateNamespacedServiceAsync(Service("a", ("app", "x")), "default", cancellationToken: Ct);
        await _client.CreateNamespacedServiceAsync(Service("b", ("app", "y")), "default", cancellationToken: Ct);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        var seen = new List<(WatchEventType, string)>();
        await foreach (var (type, svc) in _client.WatchListNamespacedServiceAsync("default", labelSelector: "app=x", resourceVersion: "0", cancellationToken: cts.Token))
        {
            seen.Add((type, svc.Metadata.Name));
            if (seen.Count == 1)
            {
                // Relabelling b into the selector is an ADDED for this watch; a out of it, a DELETED.
                await _client.PatchNamespacedServiceAsync(new V1Patch("""{"metadata":{"labels":{"app":"x"}}}""", V1Patch.PatchType.MergePatch), "b", "default", cancellationToken: Ct);
                await _client.PatchNamespacedServiceAsync(new V1Patch("""{"metadata":{"labels":{"app":"z"}}}""", V1Patch.PatchType.MergePatch), "a", "default", cancellationToken: Ct);
            }
            if (seen.Count == 3) break;
        }
        Assert.Equal([(WatchEventType.Added, "a"), (WatchEventType.Added, "b"), (WatchEventType.Deleted, "a")], seen);
    }

    [Fact]
    public async Task Watch_with_bookmarks_gets_the_current_resourceVersion()
    {
        _server.BookmarkInterval = TimeSpan.FromMilliseconds(100);
        await _client.CreateNamespacedServiceAsync(Service("a"), "default", cancellationToken: Ct);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        var rv = _server.ResourceVersion.ToString();
        await foreach (var (type, svc) in _client.WatchListNamespacedServiceAsync("default", allowWatchBookmarks: true, resourceVersion: rv, cancellationToken: cts.Token))
        {
            Assert.Equal(WatchEventType.Bookmark, type);
            Assert.Equal(rv, svc.Metadata.ResourceVersion);
            break;
        }
    }

    [Fact]
    public async Task Watch_ends_at_timeoutSeconds()
    {
        // Through plain HTTP: the C# client 21.0.8 waits for a first line before it returns a watch, so a
        // watch that ends without any event surfaces there as an HttpRequestException (EndOfStreamException).
        using var http = new HttpClient { BaseAddress = _server.Url };
        var started = DateTime.UtcNow;
        using var response = await http.GetAsync("/api/v1/namespaces/default/services?watch=true&resourceVersion=" + _server.ResourceVersion + "&timeoutSeconds=1",
            HttpCompletionOption.ResponseHeadersRead, Ct);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        Assert.True(response.Headers.TransferEncodingChunked);
        Assert.Equal("", await response.Content.ReadAsStringAsync(Ct));
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task CloseWatches_ends_open_watches()
    {
        var seen = new List<string>();
        var watching = Task.Run(async () =>
        {
            await foreach (var (_, svc) in _client.WatchListNamespacedServiceAsync("default", resourceVersion: _server.ResourceVersion.ToString(), cancellationToken: Ct))
                seen.Add(svc.Metadata.Name);
        }, Ct);
        await WaitUntil(() => _server.Requests.Any(r => r.Contains("watch=true")));
        await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);
        await WaitUntil(() => seen.Count == 1);
        _server.CloseWatches();
        await watching.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Equal(["web"], seen);
    }

    [Fact]
    public async Task Watch_from_a_compacted_resourceVersion_is_410_Gone_on_the_error_path()
    {
        await _client.CreateNamespacedServiceAsync(Service("a"), "default", cancellationToken: Ct);
        var old = _server.ResourceVersion.ToString();
        await _client.CreateNamespacedServiceAsync(Service("b"), "default", cancellationToken: Ct);
        _server.Compact();

        Exception? error = null;
        var events = 0;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(20));
        await foreach (var _ in _client.WatchListNamespacedServiceAsync("default", resourceVersion: "1", onError: e => error = e, cancellationToken: cts.Token))
            events++;

        Assert.Equal(0, events);
        var status = Assert.IsType<KubernetesException>(error).Status;
        Assert.Equal((410, "Expired"), (status.Code!.Value, status.Reason));

        var listError = await Assert.ThrowsAsync<HttpOperationException>(() =>
            _client.ListNamespacedServiceAsync("default", resourceVersion: old, resourceVersionMatch: "Exact", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.Gone, listError.Response.StatusCode);

        // From the current resourceVersion a watch works again.
        var after = await _client.ListNamespacedServiceAsync("default", cancellationToken: Ct);
        Assert.Equal(2, after.Items.Count);
        _server.BookmarkInterval = TimeSpan.FromMilliseconds(100);
        await foreach (var (type, _) in _client.WatchListNamespacedServiceAsync("default", resourceVersion: after.Metadata.ResourceVersion, allowWatchBookmarks: true, cancellationToken: cts.Token))
        {
            Assert.Equal(WatchEventType.Bookmark, type);
            break;
        }
    }

    [Fact]
    public async Task Status_subresource_is_separate_from_the_main_resource()
    {
        var svc = Service("web");
        svc.Status = new V1ServiceStatus { LoadBalancer = new V1LoadBalancerStatus { Ingress = [new V1LoadBalancerIngress { Ip = "198.18.100.1" }] } };
        var created = await _client.CreateNamespacedServiceAsync(svc, "default", cancellationToken: Ct);
        Assert.Null(created.Status?.LoadBalancer?.Ingress); // status is reset on create

        created.Status = new V1ServiceStatus { LoadBalancer = new V1LoadBalancerStatus { Ingress = [new V1LoadBalancerIngress { Ip = "198.18.100.2", IpMode = "VIP" }] } };
        created.Spec.Ports[0].Port = 81;
        var statusWritten = await _client.ReplaceNamespacedServiceStatusAsync(created, "web", "default", cancellationToken: Ct);
        Assert.Equal("198.18.100.2", statusWritten.Status.LoadBalancer.Ingress.Single().Ip);
        Assert.Equal(80, statusWritten.Spec.Ports[0].Port); // /status changes only .status
        Assert.Equal(1, statusWritten.Metadata.Generation);

        statusWritten.Status = new V1ServiceStatus();
        statusWritten.Spec.Ports[0].Port = 82;
        var mainWritten = await _client.ReplaceNamespacedServiceAsync(statusWritten, "web", "default", cancellationToken: Ct);
        Assert.Equal(82, mainWritten.Spec.Ports[0].Port);
        Assert.Equal("198.18.100.2", mainWritten.Status.LoadBalancer.Ingress.Single().Ip); // the main resource ignores .status
        Assert.Equal(2, mainWritten.Metadata.Generation);

        var patched = await _client.PatchNamespacedServiceStatusAsync(
            new V1Patch("""{"status":{"loadBalancer":{"ingress":[{"ip":"198.18.100.3"}]}},"spec":{"type":"ClusterIP"}}""", V1Patch.PatchType.MergePatch),
            "web", "default", cancellationToken: Ct);
        Assert.Equal("198.18.100.3", patched.Status.LoadBalancer.Ingress.Single().Ip);
        Assert.Equal("LoadBalancer", patched.Spec.Type);
    }

    [Fact]
    public async Task Replace_with_a_stale_resourceVersion_is_a_Conflict_and_a_no_op_write_changes_nothing()
    {
        var created = await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);
        var same = await _client.ReplaceNamespacedServiceAsync(created, "web", "default", cancellationToken: Ct);
        Assert.Equal(created.Metadata.ResourceVersion, same.Metadata.ResourceVersion);

        created.Spec.Ports[0].Port = 81;
        var updated = await _client.ReplaceNamespacedServiceAsync(created, "web", "default", cancellationToken: Ct);
        Assert.NotEqual(created.Metadata.ResourceVersion, updated.Metadata.ResourceVersion);
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.ReplaceNamespacedServiceAsync(created, "web", "default", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, e.Response.StatusCode);
        Assert.Contains("\"reason\":\"Conflict\"", e.Response.Content);

        created.Metadata.ResourceVersion = null; // unconditional
        created.Spec.Ports[0].Port = 83;
        Assert.Equal(83, (await _client.ReplaceNamespacedServiceAsync(created, "web", "default", cancellationToken: Ct)).Spec.Ports[0].Port);
    }

    [Fact]
    public async Task Merge_json_and_strategic_patches()
    {
        await _client.CreateNamespacedServiceAsync(Service("web", ("a", "1"), ("b", "2")), "default", cancellationToken: Ct);

        var merged = await _client.PatchNamespacedServiceAsync(
            new V1Patch("""{"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"externalTrafficPolicy":"Local"}}""", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: Ct);
        Assert.Equal(new Dictionary<string, string> { ["b"] = "2", ["c"] = "3" }, merged.Metadata.Labels);
        Assert.Equal("Local", merged.Spec.ExternalTrafficPolicy);
        Assert.Equal(2, merged.Metadata.Generation);

        var jsonPatched = await _client.PatchNamespacedServiceAsync(
            new V1Patch("""[{"op":"add","path":"/metadata/annotations","value":{"x/y":"z"}},{"op":"replace","path":"/spec/ports/0/port","value":90},{"op":"test","path":"/metadata/labels/b","value":"2"}]""", V1Patch.PatchType.JsonPatch),
            "web", "default", cancellationToken: Ct);
        Assert.Equal("z", jsonPatched.Metadata.Annotations["x/y"]);
        Assert.Equal(90, jsonPatched.Spec.Ports.Single().Port);

        var strategic = await _client.PatchNamespacedServiceAsync(
            new V1Patch("""{"spec":{"$setElementOrder/ports":[{"port":443},{"port":90}],"ports":[{"port":443,"protocol":"TCP","name":"https"},{"port":90,"name":"http"}]}}""", V1Patch.PatchType.StrategicMergePatch),
            "web", "default", cancellationToken: Ct);
        Assert.Equal([(443, "https"), (90, "http")], strategic.Spec.Ports.Select(p => (p.Port, p.Name)));
        Assert.Equal("TCP", strategic.Spec.Ports[1].Protocol); // merged by the port key, not replaced

        var failedTest = await Assert.ThrowsAsync<HttpOperationException>(() => _client.PatchNamespacedServiceAsync(
            new V1Patch("""[{"op":"test","path":"/metadata/labels/b","value":"9"}]""", V1Patch.PatchType.JsonPatch), "web", "default", cancellationToken: Ct));
        Assert.Equal(422, (int)failedTest.Response.StatusCode);
    }

    [Fact]
    public async Task Server_side_apply_creates_then_merges()
    {
        var applied = await _client.PatchNamespacedServiceAsync(new V1Patch(Service("web"), V1Patch.PatchType.ApplyPatch), "web", "default", fieldManager: "test", cancellationToken: Ct);
        Assert.Equal("merlin.io/lb", applied.Spec.LoadBalancerClass);
        // kubectl and the C# client send JSON; YAML is what the media type names, so check that too.
        var yaml = """
            apiVersion: v1
            kind: Service
            metadata:
              name: web
              labels: {app: web}
            spec:
              ports:
              - port: 8080
                protocol: TCP
            """;
        using var http = new HttpClient { BaseAddress = _server.Url };
        using var request = new HttpRequestMessage(HttpMethod.Patch, "/api/v1/namespaces/default/services/web?fieldManager=test")
        {
            Content = new StringContent(yaml, System.Text.Encoding.UTF8, "application/apply-patch+yaml"),
        };
        using var response = await http.SendAsync(request, Ct);
        Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        var again = KubernetesJson.Deserialize<V1Service>(await response.Content.ReadAsStringAsync(Ct));
        Assert.Equal("web", again.Metadata.Labels["app"]);
        Assert.Equal(8080, again.Spec.Ports.Single().Port);
    }

    [Fact]
    public async Task Finalizers_hold_deletion_until_they_are_removed()
    {
        var svc = Service("web");
        svc.Metadata.Finalizers = ["merlin.io/lb"];
        await _client.CreateNamespacedServiceAsync(svc, "default", cancellationToken: Ct);

        var marked = await _client.DeleteNamespacedServiceAsync("web", "default", cancellationToken: Ct);
        Assert.NotNull(marked.Metadata.DeletionTimestamp);
        var stillThere = await _client.ReadNamespacedServiceAsync("web", "default", cancellationToken: Ct);
        Assert.NotNull(stillThere.Metadata.DeletionTimestamp);

        var refused = await Assert.ThrowsAsync<HttpOperationException>(() => _client.PatchNamespacedServiceAsync(
            new V1Patch("""{"metadata":{"finalizers":["merlin.io/lb","other.io/x"]}}""", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: Ct));
        Assert.Equal(422, (int)refused.Response.StatusCode);
        Assert.Contains("\"reason\":\"Invalid\"", refused.Response.Content);

        var rvBefore = _server.ResourceVersion;
        await _client.PatchNamespacedServiceAsync(new V1Patch("""{"metadata":{"finalizers":null}}""", V1Patch.PatchType.MergePatch), "web", "default", cancellationToken: Ct);
        var gone = await Assert.ThrowsAsync<HttpOperationException>(() => _client.ReadNamespacedServiceAsync("web", "default", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.NotFound, gone.Response.StatusCode);
        Assert.Equal(rvBefore + 1, _server.ResourceVersion);
    }

    [Fact]
    public async Task Direct_access_puts_and_gets_models_and_emits_events()
    {
        var node = _server.Put(new V1Node
        {
            ApiVersion = "v1", Kind = "Node",
            Metadata = new V1ObjectMeta { Name = "n1" },
            Status = new V1NodeStatus { Addresses = [new V1NodeAddress { Type = "InternalIP", Address = "192.0.2.1" }] },
        });
        Assert.Equal("1", node.Metadata.Generation?.ToString());
        var read = await _client.ReadNodeAsync("n1", cancellationToken: Ct);
        Assert.Equal("192.0.2.1", read.Status.Addresses.Single().Address);
        Assert.Equal("192.0.2.1", _server.Get<V1Node>("v1", "Node", null, "n1")!.Status.Addresses.Single().Address);
        _server.Delete("v1", "Node", null, "n1");
        Assert.Null(_server.Get<V1Node>("v1", "Node", null, "n1"));
    }

    [Fact]
    public async Task Fail_injects_500s_and_Requests_records_them()
    {
        _server.Fail = ctx => ctx.Request.Method == "POST";
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct));
        Assert.Equal(System.Net.HttpStatusCode.InternalServerError, e.Response.StatusCode);
        Assert.Contains("POST /api/v1/namespaces/default/services", _server.Requests);
        _server.Fail = null;
        await _client.CreateNamespacedServiceAsync(Service("web"), "default", cancellationToken: Ct);
    }

    static Task WaitUntil(Func<bool> condition) => Poll.UntilAsync(condition, "the API server's change", interval: TimeSpan.FromMilliseconds(50), ct: Ct);
}
