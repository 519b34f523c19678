using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Mapping;
using Merlin.Kubernetes.Pools;
using Microsoft.Extensions.Logging;

namespace Merlin.Kubernetes.Controller;

/// <summary>The LoadBalancer controller: follows Services, Nodes, EndpointSlices and IPPools; gives each Service of its
/// class addresses from the pools (the allocation map rebuilt from every Service's status first), writes them to the
/// Service's status, and programs Merlin through its API. Reconciles one Service at a time per key, level-based: each
/// pass computes the whole desired state of that Service and writes only differences.</summary>
public sealed class ServiceController
{
    private readonly IKubernetes _k;
    private readonly ResourceCache<V1Service> _services;
    private readonly ResourceCache<V1Node> _nodes;
    private readonly ResourceCache<V1EndpointSlice> _slices;
    private readonly ResourceCache<V1IPPool> _poolObjects;
    private readonly MerlinWriter _merlin;
    private readonly ControllerOptions _options;
    private readonly EventRecorder _events;
    private readonly ControllerMetrics _metrics;
    private readonly TimeProvider _time;
    private readonly ILogger _log;
    private readonly WorkQueue _queue;
    private readonly object _allocation = new();
    private readonly AddressBook _book = new();
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<string, V1EndpointSlice>> _slicesByService = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _nodesTold = new(StringComparer.Ordinal);
    private volatile IReadOnlyList<IpPool>? _pools;
    private volatile IReadOnlyList<NodeView>? _nodeViews;
    private volatile bool _leading;
    private readonly SemaphoreSlim _poolStatusDue = new(0);

    public ServiceController(IKubernetes k, ResourceCache<V1Service> services, ResourceCache<V1Node> nodes, ResourceCache<V1EndpointSlice> slices,
        ResourceCache<V1IPPool> pools, MerlinWriter merlin, ControllerOptions options, EventRecorder events, ControllerMetrics metrics,
        TimeProvider time, ILogger<ServiceController> log)
    {
        (_k, _services, _nodes, _slices, _poolObjects, _merlin, _options, _events, _metrics, _time, _log) =
            (k, services, nodes, slices, pools, merlin, options, events, metrics, time, log);
        _queue = new WorkQueue(ReconcileAsync, options.Workers, time, log);
        services.Changed += OnService;
        nodes.Changed += OnNode;
        slices.Changed += OnSlice;
        pools.Changed += OnPool;
    }

    /// <summary>True once every Service known at leadership was reconciled; only then are Merlin services no Service owns deleted.</summary>
    public bool FirstSyncDone { get; private set; }
    public WorkQueue Queue => _queue;
    public AddressBook Book => _book;

    /// <summary>Runs while this replica leads: waits for the caches, rebuilds the allocation map from every Service's
    /// status, reads Merlin, then reconciles every Service and keeps following changes until cancelled.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        await Task.WhenAll(_services.WaitSyncedAsync(ct), _nodes.WaitSyncedAsync(ct), _slices.WaitSyncedAsync(ct), _poolObjects.WaitSyncedAsync(ct));
        RebuildBook();
        _leading = true;
        var started = Stopwatch.GetTimestamp();
        var workers = _queue.RunAsync(ct);
        var poolStatus = PoolStatusLoopAsync(ct);
        try
        {
            await _merlin.RefreshAsync(ct, force: true);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _log.LogWarning("Merlin cannot be read yet ({Error}); Services are retried until it can", e.Message);
        }
        EnqueueAll();
        await _queue.WaitIdleAsync(ct);
        FirstSyncDone = true;
        _metrics.FirstSyncSeconds.Record(Stopwatch.GetElapsedTime(started).TotalSeconds);
        _log.LogInformation("First full sync done in {Ms} ms: {Services} Services", (int)Stopwatch.GetElapsedTime(started).TotalMilliseconds, _services.Items.Count);
        await SweepOrphansAsync(ct);
        PoolStatusDue();
        using var timer = new PeriodicTimer(_options.Resync, _time);
        try
        {
            while (await timer.WaitForNextTickAsync(ct))
            {
                _merlin.MarkStale();
                EnqueueAll();
                await SweepOrphansAsync(ct);
                PoolStatusDue();
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
        await Task.WhenAll(workers, poolStatus);
    }

    // The allocation map from every Service's status, before anything is allocated: a new leader, or this one after a
    // restart, hands out nothing another Service holds. Services of other classes hold theirs too (never shared). A
    // Service whose status names an address its current terms may not share (its sharing key or ports were edited and
    // no new address was found yet, or a status edited by hand) keeps it pinned, unshared, until it gets a new one.
    private void RebuildBook()
    {
        lock (_allocation)
        {
            _book.Clear();
            // Services waiting for an address (their condition says so) are pinned after every other has claimed.
            var ordered = _services.Items.OrderBy(s => s.Metadata.CreationTimestamp ?? DateTime.MaxValue).ThenBy(ResourceCache<V1Service>.KeyOf, StringComparer.Ordinal).ToList();
            foreach (var svc in ordered.Where(s => !Waiting(s))) ClaimFromStatus(svc);
            foreach (var svc in ordered.Where(Waiting)) _book.Pin(ResourceCache<V1Service>.KeyOf(svc), StatusAddresses(svc));
        }
    }

    // Ours, and its request found no address (edited into one that clashes, or bad input): it keeps what it has, pinned.
    private bool Waiting(V1Service svc) =>
        ServiceIntent.Qualifies(svc, _options.DefaultClass)
        && (svc.Status?.Conditions?.FirstOrDefault(c => c.Type == Annotations.ConditionType) is { Status: "False" } c && AllocationFailure.Reasons.Contains(c.Reason)
            || ServiceIntent.Parse(svc, out _) is null);

    private void ClaimFromStatus(V1Service svc)
    {
        var key = ResourceCache<V1Service>.KeyOf(svc);
        var addresses = StatusAddresses(svc);
        if (addresses.Count == 0) return;
        var ours = ServiceIntent.Qualifies(svc, _options.DefaultClass);
        var intent = ours ? ServiceIntent.Parse(svc, out _) : null;
        var holder = intent?.Holder ?? new Holder(key, null, new HashSet<PortKey>(), Foreign: true);
        if (_book.TryClaim(holder, addresses) is { } clash)
        {
            _log.LogWarning("{Service}: its status names {Addresses}, but {Clash}; it keeps them unshared until it gets a new address", key, string.Join(",", addresses), clash);
            _book.Pin(key, addresses);
        }
    }

    private static List<IPAddress> StatusAddresses(V1Service svc) =>
        (svc.Status?.LoadBalancer?.Ingress ?? []).Select(i => IPAddress.TryParse(i.Ip, out var a) ? a : null).OfType<IPAddress>().ToList();

    private void OnService(V1Service? old, V1Service? now)
    {
        var svc = now ?? old!;
        var key = ResourceCache<V1Service>.KeyOf(svc);
        var mine = ServiceIntent.Qualifies(svc, _options.DefaultClass) || HasFinalizer(svc) || (old is not null && ServiceIntent.Qualifies(old, _options.DefaultClass));
        if (!mine)
        {
            // Another class's Service: its addresses are taken, as its status says.
            if (now?.Spec?.Type == "LoadBalancer" || old?.Spec?.Type == "LoadBalancer")
                lock (_allocation)
                {
                    if (now is null) _book.Release(key);
                    else if (StatusAddresses(now) is { Count: > 0 } a) _book.TryClaim(new Holder(key, null, new HashSet<PortKey>(), Foreign: true), a);
                }
            if (now is null || !_leading) return;
        }
        if (_leading) _queue.Add(key);
    }

    // Only a pool's spec changes what Services get: its status (which this controller writes) does not re-queue them.
    private void OnPool(V1IPPool? old, V1IPPool? now)
    {
        if (old is not null && now is not null && KubernetesJson.Serialize(old.Spec) == KubernetesJson.Serialize(now.Spec)) return;
        _pools = null;
        EnqueueAll();
        PoolStatusDue();
    }

    private void OnNode(V1Node? old, V1Node? now)
    {
        if (old is not null && now is not null && NodeView.From(old) == NodeView.From(now)) return; // a heartbeat
        _nodeViews = null;
        EnqueueAll();
    }

    private void OnSlice(V1EndpointSlice? old, V1EndpointSlice? now)
    {
        var slice = now ?? old!;
        if (slice.Metadata.Labels?.TryGetValue(Annotations.ServiceNameLabel, out var name) != true) return;
        var serviceKey = $"{slice.Metadata.NamespaceProperty}/{name}";
        var slices = _slicesByService.GetOrAdd(serviceKey, _ => new(StringComparer.Ordinal));
        if (now is null) slices.TryRemove(slice.Metadata.Name, out _);
        else slices[slice.Metadata.Name] = now;
        // Only ETP Local Services weigh nodes by their endpoints.
        if (_leading && _services.Get(serviceKey) is { Spec.ExternalTrafficPolicy: "Local" }) _queue.Add(serviceKey);
    }

    private void EnqueueAll()
    {
        if (!_leading) return;
        foreach (var svc in _services.Items)
            if (ServiceIntent.Qualifies(svc, _options.DefaultClass) || HasFinalizer(svc)) _queue.Add(ResourceCache<V1Service>.KeyOf(svc));
    }

    private IReadOnlyList<IpPool> Pools() => _pools ??= ParsePools();

    private IReadOnlyList<IpPool> ParsePools()
    {
        var pools = new List<IpPool>();
        foreach (var obj in _poolObjects.Items.OrderBy(p => p.Metadata.Name, StringComparer.Ordinal))
        {
            if (IpPool.Parse(obj.Metadata.Name, obj.Spec, out var error) is { } pool) pools.Add(pool);
            else _events.Warning(obj, "InvalidPool", $"{error}; no address of this pool is handed out");
        }
        return pools;
    }

    private IReadOnlyList<NodeView> Nodes() => _nodeViews ??= _nodes.Items.Select(NodeView.From).ToList();

    private static bool HasFinalizer(V1Service svc) => svc.Metadata.Finalizers?.Contains(Annotations.Finalizer) == true;

    private async Task ReconcileAsync(string key, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        try
        {
            await ReconcileServiceAsync(key, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            var reason = e switch
            {
                MerlinWriteException { Unreachable: true } => "MerlinUnreachable",
                MerlinWriteException => "MerlinRefused",
                HttpOperationException { Response.StatusCode: HttpStatusCode.Conflict } => "Conflict",
                HttpOperationException => "KubernetesApi",
                _ => "Internal",
            };
            _metrics.ReconcileErrors.Add(1, new KeyValuePair<string, object?>("reason", reason));
            if (reason != "Conflict") _log.LogWarning("{Service}: {Reason}: {Error}", key, reason, e.Message);
            if (e is MerlinWriteException && _services.Get(key) is { } svc)
            {
                _events.Warning(svc, reason, e.Message);
                // Best effort: the condition tells the user; a conflict here must not hide the error being retried.
                try { await WriteStatusAsync(svc, null, false, reason, e.Message, ct); }
                catch (HttpOperationException) { }
            }
            throw;
        }
        finally
        {
            _metrics.ReconcileSeconds.Record(Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
    }

    private async Task ReconcileServiceAsync(string key, CancellationToken ct)
    {
        var slash = key.IndexOf('/');
        var prefix = DesiredServices.Prefix(key[..slash], key[(slash + 1)..]);
        var svc = Newest(key);
        if (svc is null)
        {
            // Gone without our finalizer (removed by hand, or never ours): its Merlin services go.
            if (await _merlin.RemoveAsync(prefix, ct) > 0) _log.LogInformation("{Service}: deleted; its Merlin services were removed", key);
            lock (_allocation) _book.Release(key);
            return;
        }
        var ours = ServiceIntent.Qualifies(svc, _options.DefaultClass);
        if (!ours || svc.Metadata.DeletionTimestamp is not null)
        {
            await ReleaseAsync(svc, key, prefix, ours, ct);
            return;
        }

        var intent = ServiceIntent.Parse(svc, out var invalid);
        if (intent is null)
        {
            // Bad input changes nothing: the Service keeps its address and Merlin keeps what it had.
            _events.Warning(svc, "InvalidRequest", invalid!.ToString());
            await WriteStatusAsync(svc, null, false, "InvalidRequest", invalid.ToString(), ct);
            return;
        }
        if (!HasFinalizer(svc)) svc = await AddFinalizerAsync(svc, ct);

        AllocationResult result;
        var before = StatusAddresses(svc);
        lock (_allocation)
        {
            var current = _book.AddressesOf(key).Concat(before).Distinct().ToList();
            result = Allocator.Allocate(intent.AllocationRequest, Pools(), _book, current);
            if (result.Succeeded && _book.TryClaim(intent.Holder, result.Addresses) is { } clash)
                result = AllocationResult.Fail("AddressInUse", clash);
            // A Service that keeps its addresses while its request finds none holds them pinned: nobody joins them on
            // terms its edited request might clash with, here or after a restart (which reads the condition).
            if (!result.Succeeded && before.Count > 0) _book.Pin(key, before);
        }
        if (!result.Succeeded)
        {
            _events.Warning(svc, result.Failure!.Reason, result.Failure.Message);
            await WriteStatusAsync(svc, null, false, result.Failure.Reason, result.Failure.Message, ct);
            _queue.AddAfter(key, _options.RetryAllocation, ct);
            return;
        }
        PoolStatusDue();
        if (result.Warning is { } warning) _events.Warning(svc, "AddressWarning", warning);
        var addresses = result.Addresses;
        if (!addresses.SequenceEqual(before))
        {
            svc = await WriteStatusAsync(svc, addresses, intent.Forwarding == Forwarding.Route, "Allocated", $"{string.Join(", ", addresses)} allocated", ct) ?? svc;
            _events.Normal(svc, "IPAllocated", $"Assigned {string.Join(", ", addresses)}");
        }

        var nodes = Nodes();
        var local = intent.LocalTraffic
            ? LocalEndpoints.Count(_slicesByService.TryGetValue(key, out var slices) ? slices.Values : [])
            : new Dictionary<(string, System.Net.Sockets.AddressFamily), int>();
        var desired = DesiredServices.Build(intent, addresses, nodes, local, _options.Health);
        var writes = await _merlin.ApplyAsync(prefix, desired, _options.DrainPeriod, ct);

        var serving = desired.SelectMany(d => d.Servers).Select(s => s.Key.Address).Distinct().Count();
        var nodesText = string.Join(",", desired.SelectMany(d => d.Servers).Select(s => $"{s.Key.Address}={s.Config.Weight}").Distinct().Order(StringComparer.Ordinal));
        if (writes > 0 && _nodesTold.TryGetValue(key, out var told) && told != nodesText)
            _events.Normal(svc, "NodesChanged", $"Serving on {serving} nodes");
        _nodesTold[key] = nodesText;
        var message = serving == 0
            ? $"{string.Join(", ", addresses)}: no node can serve it now ({(intent.LocalTraffic ? "no ready endpoints on a usable node" : "no usable node")})"
            : $"{string.Join(", ", addresses)} served by {serving} nodes";
        await WriteStatusAsync(svc, addresses, intent.Forwarding == Forwarding.Route, serving == 0 ? "NoNodes" : "Programmed", message, ct, ready: serving > 0);
        _metrics.MerlinWrites.Add(writes);
    }

    // The Service was deleted or stopped being ours: its Merlin services go, its address is released (and cleared
    // from its status if it is still there), and the finalizer comes off last, so nothing is leaked if we stop midway.
    private async Task ReleaseAsync(V1Service svc, string key, string prefix, bool ours, CancellationToken ct)
    {
        var removed = await _merlin.RemoveAsync(prefix, ct);
        if (removed > 0) _log.LogInformation("{Service}: {Why}; its Merlin services were removed", key, ours ? "being deleted" : "no longer of class " + Annotations.LoadBalancerClass);
        // Our finalizer on it means the address in its status is one we gave.
        if (svc.Metadata.DeletionTimestamp is null && HasFinalizer(svc) && StatusAddresses(svc).Count > 0)
        {
            svc = await PatchStatusAsync(svc, new { loadBalancer = new { ingress = Array.Empty<object>() }, conditions = OtherConditions(svc) }, ct) ?? svc;
            _events.Normal(svc, "IPReleased", "No longer a LoadBalancer of class " + Annotations.LoadBalancerClass + "; its address was released");
        }
        lock (_allocation)
        {
            _book.Release(key);
            if (!ours && svc.Metadata.DeletionTimestamp is null) ClaimFromStatus(svc);
        }
        PoolStatusDue();
        _nodesTold.TryRemove(key, out _);
        if (HasFinalizer(svc))
        {
            var finalizers = svc.Metadata.Finalizers!.Where(f => f != Annotations.Finalizer).ToList();
            Remember(svc, await _k.CoreV1.PatchNamespacedServiceAsync(MergePatch(new { metadata = new { finalizers, resourceVersion = svc.Metadata.ResourceVersion } }),
                svc.Metadata.Name, svc.Metadata.NamespaceProperty, cancellationToken: ct));
        }
        if (svc.Metadata.DeletionTimestamp is not null && svc.Metadata.Uid is { } uid) _events.Forget(uid);
    }

    private async Task<V1Service> AddFinalizerAsync(V1Service svc, CancellationToken ct)
    {
        var finalizers = (svc.Metadata.Finalizers ?? []).Append(Annotations.Finalizer).ToList();
        return Remember(svc, await _k.CoreV1.PatchNamespacedServiceAsync(MergePatch(new { metadata = new { finalizers, resourceVersion = svc.Metadata.ResourceVersion } }),
            svc.Metadata.Name, svc.Metadata.NamespaceProperty, cancellationToken: ct));
    }

    // The object our last write returned, kept until the cache has moved past the version that write was based on:
    // the next pass then starts from what we wrote, not from a cached copy a write behind (a sure 409 Conflict).
    private readonly ConcurrentDictionary<string, (string? Before, V1Service After)> _written = new(StringComparer.Ordinal);

    private V1Service Remember(V1Service before, V1Service after)
    {
        _written[ResourceCache<V1Service>.KeyOf(after)] = (before.Metadata.ResourceVersion, after);
        return after;
    }

    private V1Service? Newest(string key)
    {
        var cached = _services.Get(key);
        if (!_written.TryGetValue(key, out var w)) return cached;
        if (cached is not null && cached.Metadata.ResourceVersion == w.Before && cached.Metadata.Uid == w.After.Metadata.Uid) return w.After;
        _written.TryRemove(key, out _);
        return cached;
    }

    // Writes status.loadBalancer.ingress (when addresses is not null) and our condition, only if either differs from
    // what the Service shows: a steady-state pass writes nothing.
    private async Task<V1Service?> WriteStatusAsync(V1Service svc, IReadOnlyList<IPAddress>? addresses, bool vipMode, string reason, string message, CancellationToken ct, bool ready = false)
    {
        var conditions = OtherConditions(svc);
        var mine = svc.Status?.Conditions?.FirstOrDefault(c => c.Type == Annotations.ConditionType);
        var status = ready ? "True" : "False";
        var changed = mine is null || mine.Status != status || mine.Reason != reason || mine.Message != message;
        conditions.Add(new V1Condition
        {
            Type = Annotations.ConditionType,
            Status = status,
            Reason = reason,
            Message = message,
            ObservedGeneration = svc.Metadata.Generation,
            LastTransitionTime = mine is not null && mine.Status == status ? mine.LastTransitionTime : _time.GetUtcNow().UtcDateTime,
        });
        object? ingress = null;
        if (addresses is not null)
        {
            var mode = vipMode ? "VIP" : "Proxy";
            var have = svc.Status?.LoadBalancer?.Ingress ?? [];
            if (have.Count != addresses.Count || have.Zip(addresses).Any(p => p.First.Ip != p.Second.ToString() || p.First.IpMode != mode))
            {
                ingress = addresses.Select(a => new { ip = a.ToString(), ipMode = mode }).ToArray();
                changed = true;
            }
        }
        if (!changed) return svc;
        object patch = ingress is null
            ? new { conditions }
            : new { loadBalancer = new { ingress }, conditions };
        return await PatchStatusAsync(svc, patch, ct);
    }

    private List<V1Condition> OtherConditions(V1Service svc) =>
        (svc.Status?.Conditions ?? []).Where(c => c.Type != Annotations.ConditionType).ToList();

    private async Task<V1Service?> PatchStatusAsync(V1Service svc, object status, CancellationToken ct) =>
        Remember(svc, await _k.CoreV1.PatchNamespacedServiceStatusAsync(MergePatch(new { metadata = new { resourceVersion = svc.Metadata.ResourceVersion }, status }),
            svc.Metadata.Name, svc.Metadata.NamespaceProperty, cancellationToken: ct));

    private static V1Patch MergePatch(object body) => new(KubernetesJson.Serialize(body), V1Patch.PatchType.MergePatch);

    // Merlin services under our prefix that no Service of ours owns (left while the controller was down, or by a
    // Service whose finalizer was removed by hand): their owner key is reconciled, which finds no Service and removes them.
    private async Task SweepOrphansAsync(CancellationToken ct)
    {
        try
        {
            foreach (var owner in await _merlin.OwnersAsync(ct))
                if (_services.Get(owner) is not { } svc || !ServiceIntent.Qualifies(svc, _options.DefaultClass)) _queue.Add(owner);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _log.LogWarning("Orphan sweep: Merlin cannot be read ({Error})", e.Message);
        }
    }

    private void PoolStatusDue()
    {
        if (_poolStatusDue.CurrentCount == 0) _poolStatusDue.Release();
    }

    // Pool status (total, used, free, overlaps) written at most once a second, and only when it changed.
    private async Task PoolStatusLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await _poolStatusDue.WaitAsync(ct);
                await WritePoolStatusAsync(ct);
                await Task.Delay(TimeSpan.FromSeconds(1), _time, ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                _log.LogWarning("IPPool status not written: {Error}", e.Message);
            }
        }
    }

    private async Task WritePoolStatusAsync(CancellationToken ct)
    {
        var pools = Pools();
        List<IPAddress> held;
        lock (_allocation) held = _book.Addresses.ToList();
        foreach (var obj in _poolObjects.Items)
        {
            var pool = pools.FirstOrDefault(p => p.Name == obj.Metadata.Name);
            var conditions = new List<V1Condition>();
            long total = 0, used = 0;
            if (pool is null)
            {
                conditions.Add(Condition("Valid", "False", "InvalidSpec", IpPool.Parse(obj.Metadata.Name, obj.Spec, out var why) is null ? why! : "invalid"));
            }
            else
            {
                total = pool.Ranges.Aggregate(0L, (sum, r) => sum > long.MaxValue - r.Count ? long.MaxValue : sum + r.Count);
                used = held.Count(pool.Contains);
                conditions.Add(Condition("Valid", "True", "Parsed", $"{pool.Ranges.Count} ranges"));
                var overlapping = pools.Where(o => o.Name != pool.Name && o.Ranges.Any(r => pool.Ranges.Any(r.Overlaps))).Select(o => o.Name).ToList();
                conditions.Add(overlapping.Count > 0
                    ? Condition("Overlapping", "True", "OverlapsOtherPools", $"shares addresses with {string.Join(", ", overlapping)}; each address is still given to one Service only")
                    : Condition("Overlapping", "False", "NoOverlap", "no other pool holds these addresses"));
            }
            _metrics.PoolAddresses.Record(total, new("pool", obj.Metadata.Name), new("state", "total"));
            _metrics.PoolAddresses.Record(used, new("pool", obj.Metadata.Name), new("state", "used"));
            var status = new V1IPPoolStatus { Total = total, Used = used, Free = total - used, Conditions = conditions };
            var have = obj.Status;
            if (have is not null && have.Total == status.Total && have.Used == status.Used && have.Free == status.Free
                && (have.Conditions ?? []).Select(c => (c.Type, c.Status, c.Message)).SequenceEqual(conditions.Select(c => (c.Type, c.Status, c.Message))))
                continue;
            var previous = have?.Conditions ?? [];
            foreach (var c in conditions)
                if (previous.FirstOrDefault(p => p.Type == c.Type && p.Status == c.Status) is { } same) c.LastTransitionTime = same.LastTransitionTime;
            await _k.CustomObjects.PatchClusterCustomObjectStatusAsync(MergePatch(new { status }), V1IPPool.Group, V1IPPool.Version, V1IPPool.Plural, obj.Metadata.Name, cancellationToken: ct);
        }
    }

    private V1Condition Condition(string type, string status, string reason, string message) =>
        new() { Type = type, Status = status, Reason = reason, Message = message, LastTransitionTime = _time.GetUtcNow().UtcDateTime };
}
