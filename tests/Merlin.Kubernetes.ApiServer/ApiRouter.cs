using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>The query parameters the handlers read.</summary>
sealed record RequestOptions(
    bool Watch, long? ResourceVersion, string? LabelSelector, string? FieldSelector,
    int? TimeoutSeconds, bool AllowBookmarks, bool SendInitialEvents, bool IncludeObject)
{
    public static RequestOptions From(IQueryCollection q)
    {
        static bool Flag(string? v) => v is "true" or "1";
        long? rv = null;
        var rvText = q["resourceVersion"].ToString();
        if (rvText.Length > 0)
        {
            if (!long.TryParse(rvText, NumberStyles.None, CultureInfo.InvariantCulture, out var parsed))
                throw new ApiError(400, "BadRequest", $"invalid resource version \"{rvText}\"");
            rv = parsed;
        }
        int? timeout = int.TryParse(q["timeoutSeconds"].ToString(), CultureInfo.InvariantCulture, out var t) ? t : null;
        return new RequestOptions(Flag(q["watch"]), rv, q["labelSelector"], q["fieldSelector"], timeout,
            Flag(q["allowWatchBookmarks"]), Flag(q["sendInitialEvents"]), q["includeObject"] == "Object");
    }
}

/// <summary>
/// Maps the Kubernetes URL space onto the store: discovery, then
/// <c>/api/v1[/watch][/namespaces/{ns}]/{resource}[/{name}[/status]]</c> and the same under
/// <c>/apis/{group}/{version}</c>, with list, watch, get, create, update, patch and delete.
/// </summary>
sealed class ApiRouter(ResourceRegistry registry, ObjectStore store, TestApiServer server)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        try
        {
            await DispatchAsync(ctx);
        }
        catch (ApiError e)
        {
            await WriteAsync(ctx, e.Code, e.ToStatus());
        }
        catch (JsonException e)
        {
            await WriteAsync(ctx, 400, ApiError.BadRequest($"the object provided is unrecognized: {e.Message}").ToStatus());
        }
        catch (Exception e) when (e is not OperationCanceledException && !ctx.Response.HasStarted)
        {
            // A bug here, not the client's: answer as the real server does (500 InternalError) with the details.
            await WriteAsync(ctx, 500, new ApiError(500, "InternalError", $"Internal error occurred: {e}").ToStatus());
        }
    }

    Task DispatchAsync(HttpContext ctx)
    {
        var segments = (ctx.Request.Path.Value ?? "/").Split('/', StringSplitOptions.RemoveEmptyEntries);
        var types = registry.All;
        var get = HttpMethods.IsGet(ctx.Request.Method);
        JsonObject? found = segments switch
        {
            [] when get => new JsonObject { ["paths"] = new JsonArray("/api", "/api/v1", "/apis", "/openapi/v3", "/version") },
            ["version"] when get => Discovery.Version(),
            ["api"] when get => Discovery.CoreVersions($"{server.Url.Host}:{server.Url.Port}"),
            ["apis"] when get => Discovery.GroupList(types),
            ["api", "v1"] when get => Discovery.ResourceList(types, "v1"),
            ["apis", var g] when get => Discovery.GroupInfo(types, g),
            ["apis", var g, var v] when get => Discovery.ResourceList(types, $"{g}/{v}"),
            ["openapi", "v3"] when get => Discovery.OpenApiV3Root(types, store.ResourceVersion),
            ["openapi", "v3", .. var rest] when get => Discovery.OpenApiV3(types, string.Join('/', rest)),
            ["api", "v1", _, ..] or ["apis", _, _, _, ..] => null,
            ["healthz" or "livez" or "readyz"] or ["openapi", "v2"] when get => null,
            _ => throw ApiError.UnknownPath(),
        };
        if (found is not null) return WriteAsync(ctx, 200, found);
        return segments switch
        {
            ["healthz" or "livez" or "readyz"] => ctx.Response.WriteAsync("ok"),
            // kubectl reads OpenAPI v2 as protobuf; an empty message is an empty document, whose lookups
            // find no schema, so client-side validation and patch computation fall back to built-in types.
            ["openapi", "v2"] => EmptyOpenApiV2(ctx),
            ["api", "v1", .. var rest] => ResourceAsync(ctx, "", "v1", rest),
            ["apis", var g, var v, .. var rest] when rest.Length > 0 => ResourceAsync(ctx, g, v, rest),
            _ => throw ApiError.UnknownPath(),
        };
    }

    async Task ResourceAsync(HttpContext ctx, string group, string version, string[] rest)
    {
        var q = RequestOptions.From(ctx.Request.Query);
        var watch = q.Watch;
        if (rest[0] == "watch")
        {
            watch = true;
            rest = rest[1..];
        }
        string? ns = null;
        if (rest is ["namespaces", var n, var r, ..] && r is not ("status" or "finalize"))
        {
            ns = n;
            rest = rest[2..];
        }
        if (rest.Length is 0 or > 3) throw ApiError.UnknownPath();
        var type = registry.Find(group, version, rest[0]) ?? throw ApiError.UnknownPath();
        var name = rest.ElementAtOrDefault(1);
        var sub = rest.ElementAtOrDefault(2);
        if ((!type.Namespaced && ns is not null) || (type.Namespaced && ns is null && name is not null) ||
            (sub is not null && !(sub == "status" && type.HasStatus)))
            throw ApiError.UnknownPath();
        var mode = sub == "status" ? WriteMode.Status : WriteMode.Main;
        var method = ctx.Request.Method;

        if (HttpMethods.IsGet(method))
        {
            var fields = name is null ? q.FieldSelector : string.Join(',', new[] { q.FieldSelector, $"metadata.name={name}" }.Where(s => !string.IsNullOrEmpty(s)));
            var filter = Selectors.Parse(q.LabelSelector, fields);
            var table = Tables.Wanted(ctx.Request.Headers.Accept.ToString());
            if (watch)
            {
                var crd = table ? CrdOf(type) : null;
                Func<JsonObject, JsonNode>? transform = table
                    ? o => Tables.Of(type, [o], long.Parse(Meta.ResourceVersion(o) ?? "0", CultureInfo.InvariantCulture), q.IncludeObject, crd)
                    : null;
                await WatchStream.ServeAsync(ctx, store, type, ns, filter, q, server.BookmarkInterval, server.Stopping, transform);
                return;
            }
            if (name is not null)
            {
                var obj = store.Get(type, ns, name, q.ResourceVersion) ?? throw ApiError.NotFound(type, name);
                await WriteAsync(ctx, 200, table ? TableOf(type, [obj], store.ResourceVersion, q) : obj);
                return;
            }
            var (items, rv) = store.List(type, ns, filter, q.ResourceVersion);
            await WriteAsync(ctx, 200, table ? TableOf(type, items, rv, q) : ListOf(type, items, rv));
            return;
        }
        if (HttpMethods.IsPost(method) && name is null)
        {
            await WriteAsync(ctx, 201, store.Create(type, ns, await ReadObjectAsync(ctx)));
            return;
        }
        if (HttpMethods.IsPut(method) && name is not null)
        {
            await WriteAsync(ctx, 200, store.Update(type, ns, name, await ReadObjectAsync(ctx), mode));
            return;
        }
        if (HttpMethods.IsPatch(method) && name is not null)
        {
            var contentType = (ctx.Request.ContentType ?? "").Split(';')[0].Trim();
            if (contentType is not (Patches.Merge or Patches.Json or Patches.Strategic or Patches.Apply))
                throw ApiError.UnsupportedMediaType(contentType);
            var body = await new StreamReader(ctx.Request.Body).ReadToEndAsync(ctx.RequestAborted);
            var existed = store.Get(type, ns, name) is not null;
            var result = store.Patch(type, ns, name, current => Patches.ApplyPatch(contentType, current, body), mode,
                create: contentType == Patches.Apply);
            await WriteAsync(ctx, existed ? 200 : 201, result);
            return;
        }
        if (HttpMethods.IsDelete(method))
        {
            var jsonBody = (ctx.Request.ContentType ?? "").StartsWith("application/json", StringComparison.Ordinal);
            var options = jsonBody && (ctx.Request.ContentLength is > 0 || ctx.Request.Headers.TransferEncoding.Count > 0)
                ? await JsonNode.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted) as JsonObject
                : null;
            var preconditions = options?["preconditions"];
            if (name is not null)
            {
                var (obj, removed) = store.Delete(type, ns, name,
                    preconditions?["resourceVersion"]?.GetValue<string>(), preconditions?["uid"]?.GetValue<string>());
                await WriteAsync(ctx, 200, removed && !ReturnsDeletedObject(type) ? Success(type, obj) : obj);
                return;
            }
            // deletecollection
            var filter = Selectors.Parse(q.LabelSelector, q.FieldSelector);
            var (items, _) = store.List(type, ns, filter);
            foreach (var item in items)
            {
                try
                {
                    store.Delete(type, Meta.Namespace(item), Meta.Name(item));
                }
                catch (ApiError e) when (e.Code == 404)
                {
                    // gone meanwhile
                }
            }
            await WriteAsync(ctx, 200, ListOf(type, items, store.ResourceVersion));
            return;
        }
        throw ApiError.MethodNotAllowed(method);
    }

    /// <summary>Like the real registries: these answer a delete with the object, the rest with a Status.</summary>
    static bool ReturnsDeletedObject(ResourceType t) =>
        t.Group is not ("" or "apps" or "rbac.authorization.k8s.io" or "coordination.k8s.io" or "discovery.k8s.io" or "events.k8s.io")
        || t.Plural is "services" or "namespaces";

    static JsonObject Success(ResourceType type, JsonObject obj) => new()
    {
        ["kind"] = "Status",
        ["apiVersion"] = "v1",
        ["metadata"] = new JsonObject(),
        ["status"] = "Success",
        ["details"] = new JsonObject
        {
            ["name"] = Meta.Name(obj),
            ["group"] = type.Group,
            ["kind"] = type.Plural,
            ["uid"] = obj["metadata"]?["uid"]?.DeepClone(),
        },
    };

    JsonObject TableOf(ResourceType type, List<JsonObject> items, long rv, RequestOptions q) =>
        Tables.Of(type, items, rv, q.IncludeObject, CrdOf(type));

    JsonObject? CrdOf(ResourceType type) => type.Group.Length == 0 ? null
        : store.Get(registry.Find("apiextensions.k8s.io", "v1", "customresourcedefinitions")!, null, type.GroupResource);

    static JsonObject ListOf(ResourceType type, List<JsonObject> items, long rv) => new()
    {
        ["kind"] = type.Kind + "List",
        ["apiVersion"] = type.ApiVersion,
        ["metadata"] = new JsonObject { ["resourceVersion"] = rv.ToString(CultureInfo.InvariantCulture) },
        ["items"] = new JsonArray(items.Select(i => (JsonNode)i).ToArray()),
    };

    static Task EmptyOpenApiV2(HttpContext ctx)
    {
        ctx.Response.ContentType = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
        ctx.Response.ContentLength = 0;
        return Task.CompletedTask;
    }

    /// <summary>
    /// Bodies must be JSON. kubectl's typed commands (<c>kubectl create namespace</c>, <c>create service</c>, …)
    /// send protobuf, which this server does not decode: they get 415 (use <c>kubectl apply/create -f</c>).
    /// </summary>
    static async Task<JsonObject> ReadObjectAsync(HttpContext ctx)
    {
        var contentType = (ctx.Request.ContentType ?? "application/json").Split(';')[0].Trim();
        if (contentType is not ("application/json" or "*/*" or ""))
            throw new ApiError(415, "UnsupportedMediaType", $"the body of the request was in an unknown format - accepted media types include: application/json (got {contentType}; this test server does not decode protobuf)");
        return await JsonNode.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted) as JsonObject
        ?? throw ApiError.BadRequest("the request body must be a JSON object");
    }

    static async Task WriteAsync(HttpContext ctx, int code, JsonNode body)
    {
        ctx.Response.StatusCode = code;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(body.ToJsonString(), ctx.RequestAborted);
    }
}
