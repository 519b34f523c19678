using System.Collections.Concurrent;
using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;
using Backoff = Merlin.Model.Backoff;

namespace Merlin.Kubernetes.Kube;

/// <summary>How to list and watch one kind of object; the client library has no informer, so this is the seam.</summary>
/// <param name="Watch">Opens a watch from a resourceVersion (with bookmarks) and yields its events until the server
/// ends it; errors the stream carries (410 Gone) go to the callback.</param>
/// <param name="Trim">Clears, before an object is kept, fields of this kind the controller never reads.</param>
public sealed record ResourceSource<T>(
    string Name,
    Func<CancellationToken, Task<(IList<T> Items, string ResourceVersion)>> List,
    Func<string, Action<Exception>, CancellationToken, IAsyncEnumerable<(WatchEventType Type, T Object)>> Watch,
    Action<T>? Trim = null)
    where T : IKubernetesObject<V1ObjectMeta>;

/// <summary>An informer: lists once, then watches from the list's resourceVersion, keeps every object by key and tells
/// <see cref="Changed"/> (old, new — either may be null) about each change. A watch that ends is reopened from the last
/// resourceVersion seen (bookmarks move it on); one the server refuses as too old (410 Gone, after a compaction) is
/// replaced by a new list, and the differences from the old copy are told as changes.</summary>
public sealed class ResourceCache<T>(ResourceSource<T> source, TimeProvider time, ILogger log)
    where T : class, IKubernetesObject<V1ObjectMeta>
{
    private readonly ConcurrentDictionary<string, T> _items = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _synced = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public event Action<T?, T?>? Changed;

    public string Name => source.Name;
    public bool Synced => _synced.Task.IsCompleted;
    public Task WaitSyncedAsync(CancellationToken ct) => _synced.Task.WaitAsync(ct);
    public ICollection<T> Items => _items.Values;
    public T? Get(string key) => _items.GetValueOrDefault(key);
    public long Relists { get; private set; }

    public static string KeyOf(T obj) =>
        obj.Metadata.NamespaceProperty is { Length: > 0 } ns ? $"{ns}/{obj.Metadata.Name}" : obj.Metadata.Name;

    public async Task RunAsync(CancellationToken ct)
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(10));
        string? resourceVersion = null;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                resourceVersion ??= await RelistAsync(ct);
                Exception? failure = null;
                await foreach (var (type, obj) in source.Watch(resourceVersion, e => failure = e, ct))
                {
                    backoff.Reset();
                    if (obj?.Metadata?.ResourceVersion is { Length: > 0 } rv) resourceVersion = rv;
                    switch (type)
                    {
                        case WatchEventType.Added:
                        case WatchEventType.Modified:
                            var key = KeyOf(obj!);
                            _items.TryGetValue(key, out var old);
                            _items[key] = Trimmed(obj!);
                            Changed?.Invoke(old, obj);
                            break;
                        case WatchEventType.Deleted:
                            if (_items.TryRemove(KeyOf(obj!), out var gone)) Changed?.Invoke(gone, null);
                            break;
                    }
                }
                if (failure is not null && IsGone(failure))
                {
                    log.LogInformation("{Resource}: watch from resourceVersion {Version} is too old (410 Gone); listing again", source.Name, resourceVersion);
                    resourceVersion = null;
                }
                else if (failure is not null && failure is not OperationCanceledException)
                {
                    throw failure;
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (IsGone(e))
            {
                log.LogInformation("{Resource}: resourceVersion {Version} is too old (410 Gone); listing again", source.Name, resourceVersion);
                resourceVersion = null;
            }
            catch (Exception e)
            {
                var delay = backoff.Next();
                log.LogWarning("{Resource}: list or watch failed ({Error}); again in {Backoff} ms", source.Name, e.Message, (int)delay.TotalMilliseconds);
                try { await Task.Delay(delay, time, ct); } catch (OperationCanceledException) { return; }
            }
        }
    }

    private async Task<string> RelistAsync(CancellationToken ct)
    {
        var (items, resourceVersion) = await source.List(ct);
        Relists++;
        var fresh = items.Select(Trimmed).ToDictionary(KeyOf, StringComparer.Ordinal);
        foreach (var (key, old) in _items)
            if (!fresh.ContainsKey(key) && _items.TryRemove(key, out _)) Changed?.Invoke(old, null);
        foreach (var (key, obj) in fresh)
        {
            _items.TryGetValue(key, out var old);
            _items[key] = obj;
            if (old?.Metadata.ResourceVersion != obj.Metadata.ResourceVersion) Changed?.Invoke(old, obj);
        }
        _synced.TrySetResult();
        return resourceVersion;
    }

    // What is kept is what the controller reads: every object's managedFields (often the larger half of a small
    // object) go, and whatever the source trims for its kind. Like client-go's informer transforms.
    private T Trimmed(T obj)
    {
        obj.Metadata.ManagedFields = null;
        source.Trim?.Invoke(obj);
        return obj;
    }

    private static bool IsGone(Exception e) => e switch
    {
        KubernetesException k => k.Status?.Code == (int)HttpStatusCode.Gone,
        HttpOperationException h => h.Response?.StatusCode == HttpStatusCode.Gone,
        _ => false,
    };
}
