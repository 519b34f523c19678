using System.Collections.Concurrent;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using WireMapper = Merlin.Contracts.WireMapper;
using Merlin.Kubernetes.Mapping;
using Merlin.Model;
using Microsoft.Extensions.Logging;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;
using Wire = Merlin.Contracts;

namespace Merlin.Kubernetes.Controller;

/// <summary>Merlin's side of the controller: what Merlin holds under our ids (read once with List and kept in step with
/// every write we make), and the writes that take one Service's Merlin services to their desired state. Only
/// differences are written, so a steady-state pass makes no call. A write refused because Merlin changed behind our
/// back (NotFound, AlreadyExists) marks the copy stale; the next pass re-reads it.</summary>
public sealed class MerlinWriter(MerlinClient api, Func<CallOptions> callOptions, ILogger<MerlinWriter> log)
{
    private sealed record Held(VirtualService Service, ConcurrentDictionary<RealServerKey, RealServer> Servers);

    private readonly ConcurrentDictionary<string, Held> _held = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _reading = new(1, 1);
    // Calls in flight to Merlin across all workers: each is one store transaction, and the daemon's throughput grows
    // with concurrency up to about this many (docs/performance.md, "Kubernetes controller").
    private readonly SemaphoreSlim _inFlight = new(MaxInFlight, MaxInFlight);
    public const int MaxInFlight = 64;
    private volatile bool _stale = true;
    // A cluster's servers are few distinct parts many times over (a node's address in every Service, one health check
    // per Service, one config per weight): each held server shares them instead of carrying its own decoded copies
    // (a Uri, an IPAddress, the id string), which took most of the controller's heap at 1,000 Services × 100 nodes.
    // Replaced on every full read, so what leaves the cluster is not kept.
    private Parts _parts = new();
    // Servers left at weight 0 because Merlin refused to drain them, and when they are to be deleted.
    private readonly ConcurrentDictionary<(string Service, RealServerKey Server), DateTimeOffset> _weightZeroUntil = new();
    private int _drainRefusedLogged;

    /// <summary>Writes made since start, by RPC name (for metrics and tests).</summary>
    public ConcurrentDictionary<string, long> Writes { get; } = new();

    public void MarkStale() => _stale = true;

    /// <summary>The Services (<c>namespace/name</c>) that own Merlin services now, read fresh if the copy is stale.</summary>
    public async Task<IReadOnlyCollection<string>> OwnersAsync(CancellationToken ct)
    {
        await RefreshAsync(ct);
        return _held.Keys.Select(DesiredServices.Owner).OfType<string>().ToHashSet();
    }

    /// <summary>Re-reads Merlin if the copy is stale (or <paramref name="force"/>).</summary>
    public async Task RefreshAsync(CancellationToken ct, bool force = false)
    {
        if (!_stale && !force) return;
        await _reading.WaitAsync(ct);
        try
        {
            if (!_stale && !force) return;
            var list = await api.ListAsync(new Empty(), callOptions().WithCancellationToken(ct));
            _held.Clear();
            var parts = _parts = new Parts();
            foreach (var item in list.Items)
            {
                if (DesiredServices.Owner(item.Service.Id) is null) continue;
                if (WireMapper.TryToModel(item.Service, out var service) is not null || service is null)
                {
                    log.LogWarning("Merlin service {Id} cannot be read as a valid record; it is left alone", item.Service.Id);
                    continue;
                }
                var servers = new ConcurrentDictionary<RealServerKey, RealServer>();
                foreach (var s in item.Servers)
                    if (WireMapper.TryToModel(s, out var server) is null && server is not null)
                    {
                        server = parts.Share(server with { ServiceId = service.Id });
                        servers[server.Key] = server;
                    }
                _held[service.Id] = new Held(service, servers);
            }
            _stale = false;
        }
        finally
        {
            _reading.Release();
        }
    }

    /// <summary>Takes the Merlin services whose ids start with <paramref name="prefix"/> to <paramref name="desired"/>:
    /// services created, updated (a changed address or protocol is a delete and a create: keys are immutable) or
    /// deleted; servers created, updated, undrained, and drained (not cut) when they leave. Returns the writes made.</summary>
    public async Task<int> ApplyAsync(string prefix, IReadOnlyList<DesiredService> desired, TimeSpan drainPeriod, CancellationToken ct)
    {
        await RefreshAsync(ct);
        var writes = 0;
        var wanted = desired.ToDictionary(d => d.Service.Id, StringComparer.Ordinal);
        foreach (var (id, held) in _held.Where(h => h.Key.StartsWith(prefix, StringComparison.Ordinal)).ToList())
        {
            if (wanted.TryGetValue(id, out var d) && d.Service.Key == held.Service.Key) continue;
            await CallAsync("DeleteService", () => api.DeleteServiceAsync(new StringValue { Value = id }, Options(ct)).ResponseAsync);
            _held.TryRemove(id, out _);
            writes++;
        }
        foreach (var d in desired)
        {
            if (!_held.TryGetValue(d.Service.Id, out var held))
            {
                await CallAsync("CreateService", () => api.CreateServiceAsync(WireMapper.ToWire(d.Service), Options(ct)).ResponseAsync);
                _held[d.Service.Id] = held = new Held(d.Service, new());
                writes++;
            }
            else if (held.Service.Config != d.Service.Config)
            {
                await CallAsync("UpdateService", () => api.UpdateServiceAsync(WireMapper.ToWire(d.Service), Options(ct)).ResponseAsync);
                _held[d.Service.Id] = held = held with { Service = d.Service };
                writes++;
            }
            writes += await ApplyServersAsync(held, d.Servers, drainPeriod, ct);
        }
        return writes;
    }

    /// <summary>Deletes every Merlin service of one Service (it was deleted or stopped qualifying).</summary>
    public Task<int> RemoveAsync(string prefix, CancellationToken ct) => ApplyAsync(prefix, [], TimeSpan.Zero, ct);

    private async Task<int> ApplyServersAsync(Held held, IReadOnlyList<RealServer> desired, TimeSpan drainPeriod, CancellationToken ct)
    {
        var wanted = desired.ToDictionary(s => s.Key);
        var work = new List<Func<CancellationToken, Task>>();
        foreach (var server in desired)
        {
            if (!held.Servers.TryGetValue(server.Key, out var have))
            {
                work.Add(async c =>
                {
                    await CallAsync("CreateServer", () => api.CreateServerAsync(WireMapper.ToWire(server), Options(c)).ResponseAsync);
                    Hold(held, server);
                });
                continue;
            }
            var undrain = have.DrainDeadline is not null;
            var update = have.Config != server.Config || have.HealthCheck != server.HealthCheck;
            if (!undrain && !update) continue;
            work.Add(async c =>
            {
                if (undrain) await CallAsync("UndrainServer", () => api.UndrainServerAsync(Name(server), Options(c)).ResponseAsync);
                if (update) await CallAsync("UpdateServer", () => api.UpdateServerAsync(UpdateOf(server), Options(c)).ResponseAsync);
                Hold(held, server);
            });
        }
        foreach (var (key, have) in held.Servers)
        {
            if (wanted.ContainsKey(key))
            {
                _weightZeroUntil.TryRemove((held.Service.Id, key), out _);
                continue;
            }
            if (have.DrainDeadline is not null) continue;
            var weightZero = _weightZeroUntil.TryGetValue((held.Service.Id, key), out var until);
            if (weightZero && DateTimeOffset.UtcNow < until) continue; // still draining by weight 0
            work.Add(async c =>
            {
                if (drainPeriod <= TimeSpan.Zero || weightZero)
                {
                    await CallAsync("DeleteServer", () => api.DeleteServerAsync(Name(have), Options(c)).ResponseAsync);
                    held.Servers.TryRemove(key, out _);
                    _weightZeroUntil.TryRemove((held.Service.Id, key), out _);
                    return;
                }
                try
                {
                    await CallAsync("DrainServer", () => api.DrainServerAsync(new Wire.DrainRequest { Server = Name(have), Period = Duration.FromTimeSpan(drainPeriod) }, Options(c)).ResponseAsync);
                    held.Servers[key] = have with { DrainDeadline = DateTimeOffset.UtcNow + drainPeriod };
                }
                catch (MerlinWriteException e) when (e.Code == StatusCode.FailedPrecondition)
                {
                    // Merlin refuses drains while its go-merlin compatibility mode is on (a Go merlin would ignore the
                    // deadline): weight 0 instead, and the delete at the first pass after the drain period.
                    if (Interlocked.Exchange(ref _drainRefusedLogged, 1) == 0)
                        log.LogWarning("Merlin refuses drains ({Reason}); leaving nodes get weight 0 and are deleted after the drain period instead", e.Message);
                    var zero = have with { Config = have.Config with { Weight = 0 } };
                    await CallAsync("UpdateServer", () => api.UpdateServerAsync(UpdateOf(zero), Options(c)).ResponseAsync);
                    _weightZeroUntil[(held.Service.Id, key)] = DateTimeOffset.UtcNow + drainPeriod;
                    Hold(held, zero);
                }
            });
        }
        // A Service over many nodes is many calls: run a few at once (each is one store transaction in Merlin).
        await Parallel.ForEachAsync(work, new ParallelOptions { MaxDegreeOfParallelism = MaxInFlight, CancellationToken = ct }, async (w, c) => await w(c));
        return work.Count;
    }

    private void Hold(Held held, RealServer server)
    {
        server = _parts.Share(server with { ServiceId = held.Service.Id });
        held.Servers[server.Key] = server;
    }

    /// <summary>One shared instance of each distinct server key, config and health check (safe from many workers).</summary>
    private sealed class Parts
    {
        private readonly ConcurrentDictionary<RealServerKey, RealServerKey> _keys = new();
        private readonly ConcurrentDictionary<RealServerConfig, RealServerConfig> _configs = new();
        private readonly ConcurrentDictionary<HealthCheck, HealthCheck> _checks = new();

        public RealServer Share(RealServer server) => server with
        {
            Key = _keys.GetOrAdd(server.Key, server.Key),
            Config = _configs.GetOrAdd(server.Config, server.Config),
            HealthCheck = _checks.GetOrAdd(server.HealthCheck, server.HealthCheck),
        };
    }

    // UpdateServer merges into the stored record and leaves an unset health endpoint as it was: a check that is to go
    // away is sent as the empty endpoint.
    private static Wire.RealServer UpdateOf(RealServer server)
    {
        var wire = WireMapper.ToWire(server);
        if (server.HealthCheck.Endpoint is null) wire.HealthCheck.Endpoint = "";
        return wire;
    }

    private static Wire.RealServer Name(RealServer server) => new() { ServiceID = server.ServiceId, Key = WireMapper.ToWire(server.Key) };

    private CallOptions Options(CancellationToken ct) => callOptions().WithCancellationToken(ct);

    private async Task CallAsync(string rpc, Func<Task> call)
    {
        await _inFlight.WaitAsync();
        try
        {
            await call();
            Writes.AddOrUpdate(rpc, 1, (_, n) => n + 1);
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.NotFound or StatusCode.AlreadyExists or StatusCode.FailedPrecondition or StatusCode.Aborted)
        {
            // Someone else changed Merlin (an operator, a drain that expired): read it again before the retry.
            _stale = true;
            throw new MerlinWriteException(rpc, e);
        }
        catch (RpcException e)
        {
            throw new MerlinWriteException(rpc, e);
        }
        finally
        {
            _inFlight.Release();
        }
    }
}

/// <summary>A refused or failed call to Merlin's API, with the RPC and Merlin's own words.</summary>
public sealed class MerlinWriteException(string rpc, RpcException inner)
    : Exception($"Merlin {rpc}: {inner.StatusCode}: {inner.Status.Detail}", inner)
{
    public StatusCode Code => inner.StatusCode;
    public bool Unreachable => inner.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded;
}
