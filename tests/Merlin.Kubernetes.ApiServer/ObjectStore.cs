using System.Globalization;
using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace Merlin.Kubernetes.ApiServer;

/// <summary>How a write treats <c>.status</c>: the main resource ignores it, <c>/status</c> changes only
/// it, and direct writes by the test (<see cref="TestApiServer.Put{T}"/>) take the object as given.</summary>
public enum WriteMode { Main, Status, Direct }

/// <summary>
/// Every object, as JSON, under one lock, with one global resourceVersion that every write bumps (like
/// etcd's revision), a bounded history of watch events, and the open watches. Objects never leave the
/// lock except as clones or serialized text.
/// </summary>
public sealed class ObjectStore(ResourceRegistry registry, int historyLimit = 10_000)
{
    readonly Lock _gate = new();
    readonly Defaults _defaults = new();
    readonly Dictionary<string, SortedDictionary<string, JsonObject>> _objects = [];
    readonly Queue<StoredEvent> _history = new();
    readonly List<WatchSubscription> _watches = [];
    long _rv;
    long _compactedThrough; // events with a resourceVersion at or below this are forgotten

    static readonly string[] SystemNamespaces = ["default", "kube-system", "kube-public", "kube-node-lease"];

    public void Initialize()
    {
        var ns = registry.Find("", "v1", "namespaces")!;
        foreach (var name in SystemNamespaces)
            Create(ns, null, new JsonObject { ["metadata"] = new JsonObject { ["name"] = name } }, WriteMode.Direct);
    }

    public long ResourceVersion
    {
        get { lock (_gate) return _rv; }
    }

    public long CompactedThrough
    {
        get { lock (_gate) return _compactedThrough; }
    }

    static string Key(string? ns, string name) => $"{ns}/{name}";

    SortedDictionary<string, JsonObject> Bucket(ResourceType type)
    {
        if (!_objects.TryGetValue(type.StorageKey, out var bucket)) _objects[type.StorageKey] = bucket = new(StringComparer.Ordinal);
        return bucket;
    }

    /// <summary>Refuses a read at an explicit resourceVersion that compaction has forgotten.</summary>
    void CheckNotCompacted(long? rv)
    {
        if (rv is > 0 && rv < _compactedThrough)
            throw ApiError.Gone($"The resourceVersion for the provided list is too old. too old resource version: {rv} ({_compactedThrough})");
    }

    public (List<JsonObject> Items, long ResourceVersion) List(ResourceType type, string? ns, Func<JsonObject, bool> filter, long? atRv = null)
    {
        lock (_gate)
        {
            CheckNotCompacted(atRv);
            var items = Bucket(type).Values
                .Where(o => (ns is null || Meta.Namespace(o) == ns) && filter(o))
                .Select(o => Shape(type, o))
                .ToList();
            return (items, _rv);
        }
    }

    public JsonObject? Get(ResourceType type, string? ns, string name, long? atRv = null)
    {
        lock (_gate)
        {
            CheckNotCompacted(atRv);
            return Bucket(type).TryGetValue(Key(ns, name), out var o) ? Shape(type, o) : null;
        }
    }

    /// <summary>A clone carrying the apiVersion and kind of the version it is served as.</summary>
    static JsonObject Shape(ResourceType type, JsonObject stored)
    {
        var clone = (JsonObject)stored.DeepClone();
        clone["apiVersion"] = type.ApiVersion;
        clone["kind"] = type.Kind;
        return clone;
    }

    public JsonObject Create(ResourceType type, string? ns, JsonObject obj, WriteMode mode = WriteMode.Main)
    {
        lock (_gate) return CreateLocked(type, ns, obj, mode);
    }

    JsonObject CreateLocked(ResourceType type, string? ns, JsonObject body, WriteMode mode)
    {
        var obj = (JsonObject)body.DeepClone();
        var meta = Meta.Of(obj);
        var name = meta["name"]?.GetValue<string>();
        if (string.IsNullOrEmpty(name))
        {
            var generate = meta["generateName"]?.GetValue<string>();
            if (string.IsNullOrEmpty(generate))
                throw ApiError.Invalid(type, "", "metadata.name: Required value: name or generateName is required");
            do name = generate + RandomSuffix(); while (Bucket(type).ContainsKey(Key(ns, name)));
            meta["name"] = name;
        }
        if (type.Namespaced)
        {
            var bodyNs = meta["namespace"]?.GetValue<string>();
            ns ??= string.IsNullOrEmpty(bodyNs) ? null : bodyNs;
            if (ns is null) throw ApiError.BadRequest("the namespace of the object is required");
            if (!string.IsNullOrEmpty(bodyNs) && bodyNs != ns)
                throw ApiError.BadRequest("the namespace of the provided object does not match the namespace sent on the request");
            var namespaces = registry.Find("", "v1", "namespaces")!;
            if (mode != WriteMode.Direct)
            {
                if (!Bucket(namespaces).TryGetValue(Key(null, ns), out var nsObj)) throw ApiError.NotFound(namespaces, ns);
                if (Meta.Of(nsObj)["deletionTimestamp"] is not null)
                    throw new ApiError(403, "Forbidden", $"{type.GroupResource} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated");
            }
            meta["namespace"] = ns;
        }
        else
        {
            ns = null;
            meta.Remove("namespace");
        }
        if (Bucket(type).ContainsKey(Key(ns, name))) throw ApiError.AlreadyExists(type, name);

        meta["uid"] = Guid.NewGuid().ToString();
        meta["creationTimestamp"] = Now();
        meta["generation"] = 1L;
        meta.Remove("deletionTimestamp");
        meta.Remove("deletionGracePeriodSeconds");
        meta.Remove("resourceVersion");
        obj["apiVersion"] = type.ApiVersion;
        obj["kind"] = type.Kind;
        // The real API resets status on create for most kinds (a Node keeps what its kubelet reports).
        if (type.HasStatus && mode != WriteMode.Direct && !(type.Group == "" && type.Kind == "Node")) obj.Remove("status");
        if (type.Group == "" && type.Kind == "Namespace") obj["status"] ??= new JsonObject { ["phase"] = "Active" };
        if (IsCrd(type)) AcceptCrd(obj);
        _defaults.Apply(type, obj, null);

        return Shape(type, Commit(type, ns, name, obj, null, "ADDED"));
    }

    public JsonObject Update(ResourceType type, string? ns, string name, JsonObject obj, WriteMode mode)
    {
        lock (_gate) return UpdateLocked(type, ns, name, obj, mode);
    }

    /// <summary>
    /// Applies <paramref name="patch"/> to the current object under the lock (so concurrent patches never
    /// conflict, as on the real server) and writes the result as an update; <paramref name="create"/>
    /// makes a missing object (server-side apply creates).
    /// </summary>
    public JsonObject Patch(ResourceType type, string? ns, string name, Func<JsonObject, JsonObject> patch, WriteMode mode, bool create = false)
    {
        lock (_gate)
        {
            if (!Bucket(type).TryGetValue(Key(ns, name), out var existing))
            {
                if (!create) throw ApiError.NotFound(type, name);
                var fresh = patch(new JsonObject { ["metadata"] = new JsonObject { ["name"] = name } });
                return CreateLocked(type, ns, fresh, mode);
            }
            return UpdateLocked(type, ns, name, patch((JsonObject)existing.DeepClone()), mode);
        }
    }

    JsonObject UpdateLocked(ResourceType type, string? ns, string name, JsonObject body, WriteMode mode)
    {
        if (!Bucket(type).TryGetValue(Key(ns, name), out var existing)) throw ApiError.NotFound(type, name);
        var meta = Meta.Of(body);
        var bodyName = meta["name"]?.GetValue<string>();
        if (!string.IsNullOrEmpty(bodyName) && bodyName != name)
            throw ApiError.BadRequest($"the name of the object ({bodyName}) does not match the name on the URL ({name})");
        var bodyRv = meta["resourceVersion"]?.GetValue<string>();
        if (!string.IsNullOrEmpty(bodyRv) && bodyRv != Meta.ResourceVersion(existing)) throw ApiError.Conflict(type, name);

        JsonObject result;
        if (mode == WriteMode.Status)
        {
            result = (JsonObject)existing.DeepClone();
            SetOrRemove(result, "status", body["status"]);
        }
        else
        {
            result = (JsonObject)body.DeepClone();
            if (type.HasStatus && mode == WriteMode.Main) SetOrRemove(result, "status", existing["status"]);
        }
        var oldMeta = Meta.Of(existing);
        var newMeta = Meta.Of(result);
        foreach (var field in new[] { "name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation" })
            SetOrRemove(newMeta, field, oldMeta[field]);
        newMeta["resourceVersion"] = Meta.ResourceVersion(existing);
        result["apiVersion"] = type.ApiVersion;
        result["kind"] = type.Kind;

        if (oldMeta["deletionTimestamp"] is not null)
        {
            var added = Meta.Finalizers(result).Except(Meta.Finalizers(existing)).ToList();
            if (added.Count > 0)
                throw ApiError.Invalid(type, name,
                    $"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{string.Join(" ", added)}]");
        }
        if (mode != WriteMode.Status) _defaults.Apply(type, result, existing);
        if (!JsonNode.DeepEquals(Spec(result), Spec(existing)))
            newMeta["generation"] = (long.TryParse(oldMeta["generation"]?.ToJsonString(), out var generation) ? generation : 0) + 1;
        if (IsCrd(type)) AcceptCrd(result);

        if (JsonNode.DeepEquals(result, existing)) return Shape(type, existing); // a no-op write changes nothing, not even the resourceVersion
        if (oldMeta["deletionTimestamp"] is not null && Meta.Finalizers(existing).Count > 0 && Meta.Finalizers(result).Count == 0)
            return Shape(type, RemoveLocked(type, ns, name, result));
        return Shape(type, Commit(type, ns, name, result, existing, "MODIFIED"));
    }

    /// <summary>Everything but metadata and status: what <c>metadata.generation</c> counts changes of.</summary>
    static JsonObject Spec(JsonObject o)
    {
        var copy = new JsonObject();
        foreach (var (k, v) in o)
            if (k is not ("metadata" or "status" or "apiVersion" or "kind")) copy[k] = v?.DeepClone();
        return copy;
    }

    /// <summary>Deletes, or with finalizers only marks for deletion; returns the object and whether it is gone.</summary>
    public (JsonObject Object, bool Removed) Delete(ResourceType type, string? ns, string name, string? preconditionRv = null, string? preconditionUid = null)
    {
        lock (_gate) return DeleteLocked(type, ns, name, preconditionRv, preconditionUid);
    }

    (JsonObject, bool) DeleteLocked(ResourceType type, string? ns, string name, string? preconditionRv, string? preconditionUid)
    {
        if (!Bucket(type).TryGetValue(Key(ns, name), out var existing)) throw ApiError.NotFound(type, name);
        if ((!string.IsNullOrEmpty(preconditionRv) && preconditionRv != Meta.ResourceVersion(existing)) ||
            (!string.IsNullOrEmpty(preconditionUid) && preconditionUid != Meta.Of(existing)["uid"]?.GetValue<string>()))
            throw ApiError.Conflict(type, name);
        var cleanup = HasContents(type);
        if (Meta.Finalizers(existing).Count > 0 || cleanup)
        {
            if (Meta.Of(existing)["deletionTimestamp"] is not null) return (Shape(type, existing), false);
            var marked = (JsonObject)existing.DeepClone();
            Meta.Of(marked)["deletionTimestamp"] = Now();
            Meta.Of(marked)["deletionGracePeriodSeconds"] = 0;
            if (IsNamespace(type)) marked["status"] = new JsonObject { ["phase"] = "Terminating" };
            var result = Commit(type, ns, name, marked, existing, "MODIFIED");
            if (cleanup && Meta.Finalizers(existing).Count == 0) ScheduleCleanup(type, name);
            return (Shape(type, result), false);
        }
        return (Shape(type, RemoveLocked(type, ns, name, existing)), true);
    }

    JsonObject RemoveLocked(ResourceType type, string? ns, string name, JsonObject last)
    {
        var gone = Commit(type, ns, name, null, last, "DELETED");
        if (IsCrd(type)) registry.UnregisterCrd(name);
        return gone;
    }

    /// <summary>Namespaces and CRDs, whose deletion waits for what they contain to be deleted.</summary>
    static bool HasContents(ResourceType type) => IsCrd(type) || IsNamespace(type);

    /// <summary>How long the simulated namespace and CRD cleanup controllers take to start.</summary>
    public TimeSpan CleanupDelay { get; set; } = TimeSpan.FromMilliseconds(500);

    void ScheduleCleanup(ResourceType type, string name) =>
        _ = Task.Delay(CleanupDelay).ContinueWith(_ => Cleanup(type, name), TaskScheduler.Default);

    /// <summary>
    /// What the namespace controller and the CRD finalizer do, asynchronously as on a real cluster:
    /// delete everything inside, and remove the container once nothing is left (objects with finalizers
    /// keep it terminating until they go).
    /// </summary>
    void Cleanup(ResourceType type, string name)
    {
        lock (_gate)
        {
            if (!Bucket(type).TryGetValue(Key(null, name), out var container) || Meta.Of(container)["deletionTimestamp"] is null) return;
            var contents = IsCrd(type)
                ? registry.CrdTypes(name).DistinctBy(t => t.StorageKey).SelectMany(t => Bucket(t).Values.Select(o => (t, o))).ToList()
                : registry.All.Where(t => t.Namespaced).DistinctBy(t => t.StorageKey)
                    .SelectMany(t => Bucket(t).Values.Where(o => Meta.Namespace(o) == name).Select(o => (t, o))).ToList();
            foreach (var (t, o) in contents)
                if (Meta.Of(o)["deletionTimestamp"] is null) DeleteLocked(t, Meta.Namespace(o), Meta.Name(o), null, null);
            if (contents.All(c => !Bucket(c.t).ContainsKey(Key(Meta.Namespace(c.o), Meta.Name(c.o)))))
                RemoveLocked(type, null, name, container);
            else
                ScheduleCleanup(type, name);
        }
    }

    /// <summary>
    /// The one place a write happens: bumps the global resourceVersion, stores or removes the object,
    /// records the event and hands it to the matching watches, all under the lock.
    /// </summary>
    JsonObject Commit(ResourceType type, string? ns, string name, JsonObject? obj, JsonObject? previous, string eventType)
    {
        var rv = ++_rv;
        var rvText = rv.ToString(CultureInfo.InvariantCulture);
        JsonObject eventObject;
        if (obj is null)
        {
            Bucket(type).Remove(Key(ns, name));
            eventObject = (JsonObject)previous!.DeepClone();
        }
        else
        {
            obj = (JsonObject)JsonNode.Parse(obj.ToJsonString())!; // one representation of every value, whoever built it
            Bucket(type)[Key(ns, name)] = obj;
            eventObject = (JsonObject)obj.DeepClone();
        }
        Meta.Of(eventObject)["resourceVersion"] = rvText;
        if (obj is not null) Meta.Of(obj)["resourceVersion"] = rvText;
        if (obj is not null && IsCrd(type)) registry.RegisterCrd(obj);

        var ev = new StoredEvent(rv, eventType, type.StorageKey, ns, eventObject, previous);
        _history.Enqueue(ev);
        while (_history.Count > historyLimit) _compactedThrough = _history.Dequeue().ResourceVersion;
        foreach (var w in _watches) w.Offer(ev);
        return obj ?? eventObject;
    }

    /// <summary>
    /// Opens a watch: from <paramref name="fromRv"/> (replaying later history), or with none/0 from
    /// synthetic ADDED events for the current objects. Throws 410 Gone when history no longer reaches back.
    /// </summary>
    public WatchSubscription Watch(ResourceType type, string? ns, Func<JsonObject, bool> filter, long? fromRv, Func<JsonObject, JsonNode>? transform = null)
    {
        lock (_gate)
        {
            var sub = new WatchSubscription(this, type, ns, filter, transform);
            if (fromRv is null or 0)
            {
                foreach (var o in Bucket(type).Values)
                    sub.Offer(new StoredEvent(0, "ADDED", type.StorageKey, Meta.Namespace(o), (JsonObject)o.DeepClone(), null));
            }
            else
            {
                if (fromRv < _compactedThrough)
                    throw ApiError.Gone($"too old resource version: {fromRv} ({_compactedThrough})");
                foreach (var ev in _history.Where(e => e.ResourceVersion > fromRv)) sub.Offer(ev);
            }
            sub.InitialEventsEnd = _rv;
            _watches.Add(sub);
            return sub;
        }
    }

    internal void Unsubscribe(WatchSubscription sub)
    {
        lock (_gate) _watches.Remove(sub);
    }

    /// <summary>Forgets all history, as an etcd compaction at the current revision does.</summary>
    public void Compact()
    {
        lock (_gate)
        {
            _history.Clear();
            _compactedThrough = _rv;
        }
    }

    public void CloseWatches()
    {
        lock (_gate)
        {
            foreach (var w in _watches) w.Close();
            _watches.Clear();
        }
    }

    static bool IsNamespace(ResourceType t) => t is { Group: "", Plural: "namespaces" };

    static bool IsCrd(ResourceType t) => t is { Group: "apiextensions.k8s.io", Plural: "customresourcedefinitions" };

    /// <summary>A CRD is accepted and established at once: its names are taken as given.</summary>
    static void AcceptCrd(JsonObject crd)
    {
        var now = Now();
        JsonObject Condition(string type, string reason) => new()
        {
            ["type"] = type, ["status"] = "True", ["lastTransitionTime"] = now, ["reason"] = reason, ["message"] = reason,
        };
        crd["status"] = new JsonObject
        {
            ["acceptedNames"] = crd["spec"]?["names"]?.DeepClone(),
            ["conditions"] = new JsonArray(Condition("NamesAccepted", "NoConflicts"), Condition("Established", "InitialNamesAccepted")),
            ["storedVersions"] = new JsonArray((crd["spec"]?["versions"] as JsonArray ?? [])
                .Where(v => v?["storage"]?.GetValue<bool>() == true).Select(v => (JsonNode?)v!["name"]!.GetValue<string>()).ToArray()),
        };
    }

    static void SetOrRemove(JsonObject target, string field, JsonNode? value)
    {
        if (value is null) target.Remove(field);
        else target[field] = value.DeepClone();
    }

    static string Now() => DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    static string RandomSuffix()
    {
        const string alphabet = "bcdfghjklmnpqrstvwxz2456789"; // the apiserver's: no vowels, no confusable digits
        return string.Create(5, 0, (span, _) =>
        {
            for (var i = 0; i < span.Length; i++) span[i] = alphabet[Random.Shared.Next(alphabet.Length)];
        });
    }
}

/// <summary>A write as the watch history keeps it: the object after the write (before it, for DELETED).</summary>
public sealed record StoredEvent(long ResourceVersion, string Type, string StorageKey, string? Namespace, JsonObject Object, JsonObject? Previous);

/// <summary>
/// One open watch: filters events (under the store's lock) and queues them as ready-to-write lines.
/// A MODIFIED event that moves an object into or out of the selector becomes ADDED or DELETED, as on
/// the real server. An optional transform reshapes each object (kubectl get -w asks for Tables).
/// </summary>
public sealed class WatchSubscription : IDisposable
{
    readonly ObjectStore _store;
    readonly ResourceType _type;
    readonly string? _ns;
    readonly Func<JsonObject, bool> _filter;
    readonly Func<JsonObject, JsonNode>? _transform;
    readonly Channel<string> _lines = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });

    internal WatchSubscription(ObjectStore store, ResourceType type, string? ns, Func<JsonObject, bool> filter, Func<JsonObject, JsonNode>? transform)
    {
        _transform = transform;
        _store = store;
        _type = type;
        _ns = ns;
        _filter = filter;
    }

    public ChannelReader<string> Lines => _lines.Reader;

    /// <summary>The resourceVersion of the store when the initial events were queued.</summary>
    public long InitialEventsEnd { get; internal set; }

    internal void Offer(StoredEvent ev)
    {
        if (ev.StorageKey != _type.StorageKey || (_ns is not null && ev.Namespace != _ns)) return;
        var now = _filter(ev.Object);
        var before = ev.Previous is not null && ev.Type == "MODIFIED" && _filter(ev.Previous);
        var type = (ev.Type, now, before) switch
        {
            ("MODIFIED", true, false) => "ADDED",
            ("MODIFIED", false, true) => "DELETED",
            ("MODIFIED", false, false) => null,
            (_, false, _) => null,
            _ => ev.Type,
        };
        if (type is null) return;
        var obj = (JsonObject)ev.Object.DeepClone();
        obj["apiVersion"] = _type.ApiVersion;
        obj["kind"] = _type.Kind;
        _lines.Writer.TryWrite(WatchLine(type, _transform?.Invoke(obj) ?? obj));
    }

    public static string WatchLine(string type, JsonNode obj) =>
        new JsonObject { ["type"] = type, ["object"] = obj }.ToJsonString();

    internal void Close() => _lines.Writer.TryComplete();

    public void Dispose()
    {
        _store.Unsubscribe(this);
        Close();
    }
}

/// <summary>Reading an object's metadata.</summary>
static class Meta
{
    public static JsonObject Of(JsonObject o)
    {
        if (o["metadata"] is JsonObject m) return m;
        var created = new JsonObject();
        o["metadata"] = created;
        return created;
    }

    public static string Name(JsonObject o) => o["metadata"]?["name"]?.GetValue<string>() ?? "";
    public static string? Namespace(JsonObject o) => o["metadata"]?["namespace"]?.GetValue<string>();
    public static string? ResourceVersion(JsonObject o) => o["metadata"]?["resourceVersion"]?.GetValue<string>();

    public static List<string> Finalizers(JsonObject o) =>
        (o["metadata"]?["finalizers"] as JsonArray)?.Select(f => f!.GetValue<string>()).ToList() ?? [];
}
