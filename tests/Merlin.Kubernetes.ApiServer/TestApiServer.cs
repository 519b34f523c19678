using System.Collections.Concurrent;
using System.Net;
using System.Text.Json.Nodes;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// An in-process Kubernetes API server for tests: Kestrel on 127.0.0.1 (a free port, plain HTTP/1.1, no
/// authentication) serving the REST paths of the resources in <see cref="ResourceRegistry"/> and of
/// every CRD created, from an in-memory <see cref="ObjectStore"/>. Good enough for the official C#
/// client and for kubectl; see the README of the controller tests for what it does not model.
/// </summary>
public sealed class TestApiServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly ResourceRegistry _registry = new();
    readonly ObjectStore _store;
    readonly ConcurrentQueue<string> _requests = new();
    readonly CancellationTokenSource _stopping = new();

    TestApiServer(WebApplication app)
    {
        _app = app;
        _store = new ObjectStore(_registry);
        _store.Initialize();
    }

    public static async Task<TestApiServer> StartAsync(CancellationToken ct = default)
    {
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
            k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http1));
        var app = builder.Build();
        var server = new TestApiServer(app);
        var router = new ApiRouter(server._registry, server._store, server);
        app.Run(server.ServeAsync(router));
        await app.StartAsync(ct);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Url = new Uri(address.Replace("[::]", "127.0.0.1", StringComparison.Ordinal));
        return server;
    }

    RequestDelegate ServeAsync(ApiRouter router) => async ctx =>
    {
        _requests.Enqueue($"{ctx.Request.Method} {ctx.Request.Path}{ctx.Request.QueryString}");
        if (Fail?.Invoke(ctx) == true)
        {
            var error = new ApiError(500, "InternalError", "Internal error occurred: injected by the test");
            ctx.Response.StatusCode = 500;
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(error.ToStatus().ToJsonString());
            return;
        }
        await router.HandleAsync(ctx);
    };

    public Uri Url { get; private set; } = null!;

    /// <summary>How often a watch that allows bookmarks gets one when nothing else happens.</summary>
    public TimeSpan BookmarkInterval { get; set; } = TimeSpan.FromSeconds(1);

    internal CancellationToken Stopping => _stopping.Token;

    public KubernetesClientConfiguration ClientConfiguration() => new() { Host = Url.ToString() };

    /// <summary>Writes a kubeconfig for kubectl and merlin-k8s (one cluster at <see cref="Url"/>, one context, a user with
    /// a token the server ignores: the C# client refuses a kubeconfig user without credentials).</summary>
    public string WriteKubeconfig(string path)
    {
        File.WriteAllText(path, $$"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: merlin-test
              cluster:
                server: {{Url.ToString().TrimEnd('/')}}
            contexts:
            - name: merlin-test
              context:
                cluster: merlin-test
                user: merlin-test
                namespace: default
            current-context: merlin-test
            users:
            - name: merlin-test
              user: {token: merlin-test}
            preferences: {}

            """);
        return path;
    }

    /// <summary>The current global resourceVersion (the last write's).</summary>
    public long ResourceVersion => _store.ResourceVersion;

    /// <summary>Forgets the event history: watching (or reading at) any older resourceVersion gets 410 Gone.</summary>
    public void Compact() => _store.Compact();

    /// <summary>Ends every open watch stream, as an apiserver restart or a load balancer would.</summary>
    public void CloseWatches() => _store.CloseWatches();

    /// <summary>Fault injection: a request for which this returns true is answered 500 with a Status.</summary>
    public Func<HttpContext, bool>? Fail { get; set; }

    /// <summary>"VERB path?query" of every request so far, in arrival order.</summary>
    public IReadOnlyList<string> Requests => [.. _requests];

    /// <summary>The stored object as the client's model, or null.</summary>
    public T? Get<T>(string apiVersion, string kind, string? ns, string name) where T : class
    {
        var json = _store.Get(Type(apiVersion, kind), ns, name);
        return json is null ? null : KubernetesJson.Deserialize<T>(json.ToJsonString());
    }

    /// <summary>
    /// Creates or replaces an object as given — status included, resourceVersion ignored — bumping the
    /// resourceVersion and emitting the watch event the API would. Returns the stored object.
    /// </summary>
    public T Put<T>(T obj) where T : IKubernetesObject<V1ObjectMeta>
    {
        var type = Type(obj.ApiVersion, obj.Kind);
        var json = JsonNode.Parse(KubernetesJson.Serialize(obj)) as JsonObject ?? throw new ArgumentException("not an object", nameof(obj));
        (json["metadata"] as JsonObject)?.Remove("resourceVersion");
        var ns = type.Namespaced ? obj.Metadata.NamespaceProperty ?? "default" : null;
        var stored = _store.Get(type, ns, obj.Metadata.Name) is null
            ? _store.Create(type, ns, json, WriteMode.Direct)
            : _store.Update(type, ns, obj.Metadata.Name, json, WriteMode.Direct);
        return KubernetesJson.Deserialize<T>(stored.ToJsonString());
    }

    /// <summary>Deletes as the API would: an object with finalizers is only marked (deletionTimestamp).</summary>
    public void Delete(string apiVersion, string kind, string? ns, string name) =>
        _store.Delete(Type(apiVersion, kind), ns, name);

    ResourceType Type(string apiVersion, string kind) =>
        _registry.FindKind(apiVersion, kind) ?? throw new ArgumentException($"the server does not serve {apiVersion} {kind}");

    public async ValueTask DisposeAsync()
    {
        _store.CloseWatches();
        await _stopping.CancelAsync();
        await _app.StopAsync();
        await _app.DisposeAsync();
        _stopping.Dispose();
    }
}
