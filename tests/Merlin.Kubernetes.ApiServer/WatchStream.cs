using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>
/// Serves one watch: newline-delimited <c>{"type":…,"object":…}</c> events, flushed one by one on a
/// chunked <c>application/json</c> response; BOOKMARKs every <see cref="TestApiServer.BookmarkInterval"/>
/// when asked for; ends at <c>timeoutSeconds</c>, when the client goes, or on
/// <see cref="TestApiServer.CloseWatches"/>. A resourceVersion older than the history is answered with
/// a single ERROR event carrying a 410 Expired Status, as the real server does.
/// </summary>
static class WatchStream
{
    public static async Task ServeAsync(HttpContext ctx, ObjectStore store, ResourceType type, string? ns,
        Func<JsonObject, bool> filter, RequestOptions q, TimeSpan bookmarkInterval, CancellationToken stopping,
        Func<JsonObject, JsonNode>? transform = null)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "application/json";
        WatchSubscription sub;
        try
        {
            sub = store.Watch(type, ns, filter, q.ResourceVersion, transform);
        }
        catch (ApiError e) when (e.Code == 410)
        {
            await WriteLineAsync(ctx, WatchSubscription.WatchLine("ERROR", e.ToStatus()), ctx.RequestAborted);
            return;
        }

        using (sub)
        {
            using var done = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, stopping);
            if (q.TimeoutSeconds is > 0) done.CancelAfter(TimeSpan.FromSeconds(q.TimeoutSeconds.Value));
            try
            {
                await ctx.Response.StartAsync(done.Token);
                await ctx.Response.Body.FlushAsync(done.Token);
                var initialEndPending = q.SendInitialEvents && q.AllowBookmarks;
                while (!done.IsCancellationRequested)
                {
                    using var tick = CancellationTokenSource.CreateLinkedTokenSource(done.Token);
                    if (q.AllowBookmarks) tick.CancelAfter(initialEndPending ? TimeSpan.Zero : bookmarkInterval);
                    try
                    {
                        if (!await sub.Lines.WaitToReadAsync(tick.Token)) return; // closed by CloseWatches
                        await DrainAsync(ctx, sub, done.Token);
                    }
                    catch (OperationCanceledException) when (!done.IsCancellationRequested)
                    {
                        // Every event up to the store's resourceVersion is queued by now: write them, then say so.
                        var rv = store.ResourceVersion;
                        await DrainAsync(ctx, sub, done.Token);
                        await WriteLineAsync(ctx, WatchSubscription.WatchLine("BOOKMARK", Bookmark(type, rv, initialEndPending)), done.Token);
                        initialEndPending = false;
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // timeoutSeconds elapsed, the client left or the server stops: the stream just ends.
            }
        }
    }

    static async Task DrainAsync(HttpContext ctx, WatchSubscription sub, CancellationToken ct)
    {
        var any = false;
        var batch = new StringBuilder();
        while (sub.Lines.TryRead(out var line))
        {
            batch.Append(line).Append('\n');
            any = true;
        }
        if (any) await WriteAsync(ctx, batch.ToString(), ct);
    }

    static JsonObject Bookmark(ResourceType type, long rv, bool initialEventsEnd)
    {
        var meta = new JsonObject { ["resourceVersion"] = rv.ToString(CultureInfo.InvariantCulture) };
        if (initialEventsEnd) meta["annotations"] = new JsonObject { ["k8s.io/initial-events-end"] = "true" };
        return new JsonObject { ["kind"] = type.Kind, ["apiVersion"] = type.ApiVersion, ["metadata"] = meta };
    }

    static Task WriteLineAsync(HttpContext ctx, string line, CancellationToken ct) => WriteAsync(ctx, line + "\n", ct);

    static async Task WriteAsync(HttpContext ctx, string text, CancellationToken ct)
    {
        await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(text), ct);
        await ctx.Response.Body.FlushAsync(ct);
    }
}
