using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Model;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Microsoft.Extensions.Logging;
using WireServer = Merlin.Contracts.RealServer;
using WireService = Merlin.Contracts.VirtualService;
using Wire = Merlin.Contracts;

namespace Merlin.Api;

/// <summary>
/// The merlin gRPC service. Semantics follow the original merlin (partial updates merge into the stored
/// record; the key is immutable) with its defects fixed: NotFound for unknown ids, deletes cascade in one
/// transaction, store failures are Unavailable. Every record is validated before it is stored, so the
/// store only ever holds records the daemon can program.
/// </summary>
public sealed partial class MerlinService(IStore store, IStatusReporter status, ILogger<MerlinService> logger, TimeProvider time, FleetSettings fleet) : Wire.Merlin.MerlinBase
{
    private static readonly Empty Done = new();
    private const int OptimisticRetries = 8;

    public override Task<Empty> CreateService(WireService request, ServerCallContext context) => Guard(context, async ct =>
    {
        var model = Valid(WireMapper.TryToModel(request, out var service), service);
        if (await GoMerlinCompatAsync(ct))
        {
            RefuseIfGoMerlinCannot(GoMerlin.Check(model));
            // Only creates need this: ids never change, and a pair already stored was stored before the mode.
            var ids = (await store.ListAsync(ct)).Items.Select(i => i.Service.Id);
            RefuseIfGoMerlinCannot(GoMerlin.CheckId(model.Id, ids));
        }
        await store.CreateServiceAsync(StoredRecords.Of(RecordDigest.Stamped(WireMapper.ToWire(model))), ct);
        LogCreatedService(model.Id, model.Key.ToString());
        return Done;
    });

    public override Task<Empty> UpdateService(WireService request, ServerCallContext context) => Guard(context, async ct =>
    {
        if (Validation.Id(request.Id, "id") is { } idError) throw Invalid(idError);
        if (request.Config is null) throw Invalid(new("config", "required: an update changes config only"));
        var compat = await GoMerlinCompatAsync(ct);
        var written = await UpdateOptimisticallyAsync(
            async () => Record(await store.GetServiceAsync(request.Id, ct) ?? throw NotFound($"service {request.Id} does not exist")),
            current => Normalized(Merge(current, request), compat),
            (next, version) => store.UpdateServiceAsync(StoredRecords.Of(next), version, ct));
        if (written) LogUpdatedService(request.Id);
        return Done;
    });

    public override Task<Empty> DeleteService(StringValue request, ServerCallContext context) => Guard(context, async ct =>
    {
        if (Validation.Id(request?.Value, "value") is { } idError) throw Invalid(idError with { Field = "id" });
        await store.DeleteServiceAsync(request!.Value, ct);
        LogDeletedService(request.Value);
        return Done;
    });

    public override Task<Empty> CreateServer(WireServer request, ServerCallContext context) => Guard(context, async ct =>
    {
        var model = Valid(WireMapper.TryToModel(request, out var server), server) with { DrainDeadline = null }; // only DrainServer drains
        if (await GoMerlinCompatAsync(ct)) RefuseIfGoMerlinCannot(GoMerlin.Check(model));
        // The store checks the server's family against the service it writes on (no read of the service first).
        try
        {
            await store.CreateServerAsync(StoredRecords.Of(RecordDigest.Stamped(WireMapper.ToWire(model))), ct);
        }
        catch (NotFoundException)
        {
            throw NotFound($"service {model.ServiceId} does not exist: create it before its servers");
        }
        LogCreatedServer(model.ServiceId, model.Key.ToString());
        return Done;
    });

    public override Task<Empty> UpdateServer(WireServer request, ServerCallContext context) => Guard(context, async ct =>
    {
        var (serviceId, ip, port) = ServerIdentity(request);
        var compat = await GoMerlinCompatAsync(ct);
        var written = await UpdateOptimisticallyAsync(
            async () => Record(await store.GetServerAsync(serviceId, ip, port, ct)
                ?? throw NotFound($"server {Endpoints.Format(System.Net.IPAddress.Parse(ip), (ushort)port)} of service {serviceId} does not exist")),
            current => Normalized(Merge(current, request), compat),
            (next, version) => store.UpdateServerAsync(StoredRecords.Of(next), version, ct));
        if (written) LogUpdatedServer(serviceId, Endpoints.Format(System.Net.IPAddress.Parse(ip), (ushort)port));
        return Done;
    });

    public override Task<Empty> DeleteServer(WireServer request, ServerCallContext context) => Guard(context, async ct =>
    {
        var (serviceId, ip, port) = ServerIdentity(request);
        await store.DeleteServerAsync(serviceId, ip, port, ct);
        LogDeletedServer(serviceId, $"{ip}:{port}");
        return Done;
    });

    public override Task<ListResponse> List(Empty request, ServerCallContext context) => Guard(context, async ct =>
    {
        var snapshot = await store.ListAsync(ct);
        var response = new ListResponse();
        foreach (var item in snapshot.Items)
        {
            // Merlin's mark is the store's business, not the client's: the list is the records as the original sent them.
            response.Items.Add(ListItem(item));
        }
        StatusWireMapper.AddHealth(response, status.Health());
        // The daemon's clock, for a drain's time left; only when something drains, so that a list of an
        // unchanged store is the same message every time (and the same bytes the original sent).
        if (response.Items.Any(i => i.Servers.Any(s => s.DrainDeadline is not null))) response.Now = Timestamp.FromDateTimeOffset(time.GetUtcNow());
        return response;
    });

    /// <summary>The services a ListStream message carries at most; fewer when they pass <see cref="ListChunkBytes"/>.</summary>
    internal const int ListChunkServices = 256;

    /// <summary>A message is sent once its services reach this size (a service's servers are never split).</summary>
    internal const int ListChunkBytes = 512 * 1024;

    /// <summary>
    /// Sends each page of the store's paged read (<see cref="IStore.ListPagesAsync"/>, all at one revision) as soon as
    /// it is read, so the first services leave before the last are read; a page past <see cref="ListChunkBytes"/>
    /// goes in several messages.
    /// </summary>
    public override Task ListStream(Empty request, IServerStreamWriter<ListResponse> responseStream, ServerCallContext context) => Guard(context, async ct =>
    {
        await foreach (var page in store.ListPagesAsync(ListChunkServices, ct))
        {
            var chunk = new ListResponse();
            var bytes = 0;
            foreach (var item in page.Items)
            {
                var entry = ListItem(item); // as List: the mark is the store's business
                chunk.Items.Add(entry);
                bytes += entry.CalculateSize();
                if (bytes < ListChunkBytes) continue;
                await responseStream.WriteAsync(Finished(chunk), ct);
                (chunk, bytes) = (new ListResponse(), 0);
            }
            // An empty store's one empty page is still one message: the client learns there is nothing.
            if (chunk.Items.Count > 0 || page.Items.Count == 0) await responseStream.WriteAsync(Finished(chunk), ct);
        }
        return Done;
    });

    /// <summary>A snapshot's item as List sends it: the records without Merlin's mark (cleared in place: the snapshot is the call's own).</summary>
    private static ListResponse.Types.Item ListItem(StoreItem item)
    {
        var service = StoredRecords.Message(item.Service);
        service.ClearMerlinDigest();
        var entry = new ListResponse.Types.Item { Service = service };
        foreach (var stored in item.Servers)
        {
            var server = StoredRecords.Message(stored);
            server.ClearMerlinDigest();
            entry.Servers.Add(server);
        }
        (entry.TableHash, entry.TableProblem) = LookupTables.Describe(service, item.Table);
        return entry;
    }

    public override Task<ServiceTable> GetTable(StringValue request, ServerCallContext context) => Guard(context, async ct =>
    {
        if (Validation.Id(request?.Value, "value") is { } idError) throw Invalid(idError with { Field = "id" });
        // Only this service's records: agents ask every few seconds, for each of their services.
        var item = await store.GetItemAsync(request!.Value, ct)
            ?? throw NotFound($"service {request!.Value} does not exist");
        return new ServiceTable
        {
            Table = item.Table is { } bytes ? Google.Protobuf.ByteString.CopyFrom(bytes) : Google.Protobuf.ByteString.Empty,
            Service = RecordDigest.Unmarked(StoredRecords.Message(item.Service)),
        };
    });

    /// <summary>A list message as List completes it: this node's health verdicts, and its clock when a server drains.</summary>
    private ListResponse Finished(ListResponse response)
    {
        StatusWireMapper.AddHealth(response, status.Health());
        if (response.Items.Any(i => i.Servers.Any(s => s.DrainDeadline is not null))) response.Now = Timestamp.FromDateTimeOffset(time.GetUtcNow());
        return response;
    }

    public override Task<StatusResponse> Status(Empty request, ServerCallContext context) => Guard(context, async ct =>
    {
        var response = StatusWireMapper.ToWire(status.Report());
        try
        {
            response.Compatibility = (await store.GetSettingsAsync(ct)).Compatibility;
        }
        catch (StoreUnavailableException)
        {
            // The status must answer while the store is down (it says so); the setting is then unknown.
            response.Compatibility = "";
        }
        return response;
    });

    public override Task<Settings> GetSettings(Empty request, ServerCallContext context) => Guard(context, async ct => StoredRecords.Message(await store.GetSettingsAsync(ct)));

    public override Task<Settings> UpdateSettings(Settings request, ServerCallContext context) => Guard(context, async ct =>
    {
        if (request is null) throw Invalid(new("settings", "required"));
        if (request.HasCompatibility && request.Compatibility is not ("" or GoMerlin.Mode))
            throw Invalid(new("compatibility", $"{Validation.Quote(request.Compatibility)} is not a compatibility mode (\"{GoMerlin.Mode}\", or \"\" for none)"));
        var settings = StoredRecords.Message(await store.GetSettingsAsync(ct));
        var next = settings.Clone();
        next.MergeFrom(request);
        if (!next.Equals(settings))
        {
            await store.SetSettingsAsync(StoredRecords.Of(next), ct);
            fleet.Forget();
            LogSettings(next.Compatibility.Length == 0 ? "off" : next.Compatibility);
        }
        return next;
    });

    public override Task<StatusResponse> DrainNode(Empty request, ServerCallContext context) => Guard(context, async ct =>
    {
        var response = await DrainNodeAsync(true, ct);
        LogDrainedNode(true);
        return response;
    });

    public override Task<StatusResponse> UndrainNode(Empty request, ServerCallContext context) => Guard(context, async ct =>
    {
        var response = await DrainNodeAsync(false, ct);
        LogDrainedNode(false);
        return response;
    });

    public override Task<CountersResponse> Counters(Empty request, ServerCallContext context) => Guard(context, async ct =>
    {
        try
        {
            return StatusWireMapper.ToWire(await status.CountersAsync(ct));
        }
        catch (Exception e) when (e is not (OperationCanceledException or RpcException))
        {
            LogCountersFailed(e.Message);
            throw new RpcException(new Grpc.Core.Status(StatusCode.Unavailable, $"reading the dataplane's counters failed: {e.Message}"));
        }
    });

    private async Task<StatusResponse> DrainNodeAsync(bool drain, CancellationToken ct)
    {
        try
        {
            return StatusWireMapper.ToWire(await status.DrainNodeAsync(drain, ct));
        }
        catch (NodeDrainException e)
        {
            throw new RpcException(new Grpc.Core.Status(StatusCode.FailedPrecondition, e.Message));
        }
    }

    /// <summary>
    /// Read, merge, write only if something changed, and start over if another writer got in between
    /// (the store refuses a write whose version is stale). Returns whether a write happened. What is written
    /// carries Merlin's mark (<see cref="RecordDigest"/>); a change of the mark alone is no change, so a record a
    /// Go merlin wrote stays as it is until its content changes.
    /// </summary>
    private static async Task<bool> UpdateOptimisticallyAsync<T>(Func<Task<Versioned<T>>> read, Func<T, T> next, Func<T, long, Task> write)
        where T : Google.Protobuf.IMessage<T>
    {
        for (var attempt = 0; ; attempt++)
        {
            var current = await read();
            var updated = next(current.Value);
            if (SameContent(updated, current.Value)) return false;
            try
            {
                await write(Stamped(updated), current.Version);
                return true;
            }
            catch (ConflictException) when (attempt < OptimisticRetries) { }
        }
    }

    /// <summary>The protobuf record the API merges into (the store's own: merges work on a clone).</summary>
    private static Versioned<WireService> Record(Versioned<StoredService> stored) => new(StoredRecords.Message(stored.Value), stored.Version);

    /// <inheritdoc cref="Record(Versioned{StoredService})"/>
    private static Versioned<WireServer> Record(Versioned<StoredServer> stored) => new(StoredRecords.Message(stored.Value), stored.Version);

    private static bool SameContent<T>(T a, T b) where T : Google.Protobuf.IMessage<T> => (a, b) switch
    {
        (WireService x, WireService y) => RecordDigest.SameContent(x, y),
        (WireServer x, WireServer y) => RecordDigest.SameContent(x, y),
        _ => a.Equals(b),
    };

    private static T Stamped<T>(T record) => record switch
    {
        WireService s => (T)(object)RecordDigest.Stamped(s),
        WireServer s => (T)(object)RecordDigest.Stamped(s),
        _ => record,
    };

    /// <summary>
    /// Validated and in the form we store (aliases for flags, no default-valued extensions); with
    /// <paramref name="goMerlin"/>, refused unless a Go merlin can program it too.
    /// </summary>
    private static WireService Normalized(WireService service, bool goMerlin)
    {
        var model = Valid(WireMapper.TryToModel(service, out var m), m);
        if (goMerlin) RefuseIfGoMerlinCannot(GoMerlin.Check(model));
        return WireMapper.ToWire(model);
    }

    private static WireServer Normalized(WireServer server, bool goMerlin)
    {
        var model = Valid(WireMapper.TryToModel(server, out var m), m);
        if (goMerlin) RefuseIfGoMerlinCannot(GoMerlin.Check(model));
        return WireMapper.ToWire(model);
    }

    /// <summary>
    /// Whether the store's compatibility mode is go-merlin: a change made through this node applies from the next
    /// call, one made through another node within <see cref="FleetSettings.MaxAge"/>.
    /// </summary>
    private async Task<bool> GoMerlinCompatAsync(CancellationToken ct) =>
        (await fleet.GetAsync(ct)).Compatibility == GoMerlin.Mode;

    /// <summary>FailedPrecondition: the record is valid, and refused only while the mode is on.</summary>
    private static void RefuseIfGoMerlinCannot(ValidationError? error)
    {
        if (error is not null) throw new RpcException(new Grpc.Core.Status(StatusCode.FailedPrecondition, error.ToString()));
    }

    /// <summary>An update changes config only: the key is immutable; flags belong to their scheduler.</summary>
    private static WireService Merge(WireService stored, WireService update)
    {
        if (update.Key is not null && !SameKey(update.Key, stored.Key))
            throw Invalid(new("key", "is immutable: delete and re-create the service to change it"));
        var next = stored.Clone();
        next.Config ??= new();
        var c = update.Config;
        if (c.Scheduler.Length != 0 && c.Scheduler != next.Config.Scheduler)
        {
            // A new scheduler keeps the flag bits it gives a meaning too — sh and mh both read flag-1 as
            // fallback and flag-2 as port, so a move between them hashes the same way, as it did with the Go
            // merlin, which kept every flag — and drops the rest, which the kernel would ignore anyway.
            next.Config.Scheduler = c.Scheduler;
            var kept = next.Config.Flags.Where(f => Schedulers.ParseFlags(c.Scheduler.Trim(), [f], "", out _) is null).ToList();
            next.Config.Flags.Clear();
            next.Config.Flags.AddRange(kept);
        }
        if (c.Flags.Count != 0)
        {
            next.Config.Flags.Clear();
            // A single "" clears all flags (there is no other way to send an empty list that means "set").
            next.Config.Flags.AddRange(c.Flags.Where(f => f.Length != 0));
        }
        if (c.HasPersistenceTimeout) next.Config.PersistenceTimeout = c.PersistenceTimeout;
        if (c.HasPersistenceNetmask) next.Config.PersistenceNetmask = c.PersistenceNetmask;
        if (c.HasOnePacket) next.Config.OnePacket = c.OnePacket;
        return next;
    }

    /// <summary>Partial update as the original: unset fields keep their stored value; weight and endpoint are
    /// taken whenever present, so weight 0 and endpoint "" (no check) can be set.</summary>
    private static WireServer Merge(WireServer stored, WireServer update)
    {
        var next = stored.Clone();
        next.Config ??= new();
        next.HealthCheck ??= new();
        if (update.Config is { } c)
        {
            if (c.Weight is not null) next.Config.Weight = c.Weight;
            if (c.Forward != Wire.ForwardMethod.UnsetForwardMethod)
            {
                if (c.Forward != next.Config.Forward)
                {
                    // Tunnel settings belong to the old forward method.
                    next.Config.ClearTunnelType();
                    next.Config.ClearTunnelPort();
                    next.Config.TunnelFlags.Clear();
                }
                next.Config.Forward = c.Forward;
            }
            if (c.HasTunnelType) next.Config.TunnelType = c.TunnelType;
            if (c.HasTunnelPort) next.Config.TunnelPort = c.TunnelPort;
            if (c.TunnelFlags.Count != 0) { next.Config.TunnelFlags.Clear(); next.Config.TunnelFlags.AddRange(c.TunnelFlags.Where(f => f.Length != 0)); }
            if (c.HasUpperThreshold) next.Config.UpperThreshold = c.UpperThreshold;
            if (c.HasLowerThreshold) next.Config.LowerThreshold = c.LowerThreshold;
        }
        if (update.HealthCheck is { } h)
        {
            if (h.Endpoint is not null) next.HealthCheck.Endpoint = h.Endpoint;
            if (h.Period is not null) next.HealthCheck.Period = h.Period;
            if (h.Timeout is not null) next.HealthCheck.Timeout = h.Timeout;
            if (h.UpThreshold != 0) next.HealthCheck.UpThreshold = h.UpThreshold;
            if (h.DownThreshold != 0) next.HealthCheck.DownThreshold = h.DownThreshold;
        }
        return next;
    }

    private static (string ServiceId, string Ip, uint Port) ServerIdentity(WireServer request)
    {
        if (request is null) throw Invalid(new("server", "required"));
        if (Validation.Id(request.ServiceID, "serviceID") is { } idError) throw Invalid(idError);
        if (request.Key is null) throw Invalid(new("key", "required (ip and port)"));
        if (Validation.Address(request.Key.Ip, "key.ip", out var address) is { } ipError) throw Invalid(ipError);
        if (Validation.Port(request.Key.Port, "key.port") is { } portError) throw Invalid(portError);
        return (request.ServiceID, address!.ToString(), request.Key.Port);
    }

    private static bool SameKey(WireService.Types.Key a, WireService.Types.Key b) =>
        StoredRecords.Identity(new WireService { Key = a }) == StoredRecords.Identity(new WireService { Key = b });

    private static T Valid<T>(ValidationError? error, T? value) where T : class =>
        error is not null ? throw Invalid(error) : value!;

    private static RpcException Invalid(ValidationError error) => new(new Grpc.Core.Status(StatusCode.InvalidArgument, error.ToString()));

    private static RpcException NotFound(string message) => new(new Grpc.Core.Status(StatusCode.NotFound, message));

    /// <summary>
    /// Maps store failures to status codes; nothing a client sends can crash the daemon. Every RPC runs inside
    /// it, so none answers UNKNOWN ("Exception was thrown by handler").
    /// </summary>
    private async Task<T> Guard<T>(ServerCallContext context, Func<CancellationToken, Task<T>> call)
    {
        try
        {
            return await call(context.CancellationToken);
        }
        catch (RpcException) { throw; }
        catch (ValidationException e) { throw Invalid(e.Error); }
        catch (NotFoundException e) { throw NotFound(e.Message); }
        catch (AlreadyExistsException e) { throw new RpcException(new Grpc.Core.Status(StatusCode.AlreadyExists, e.Message)); }
        catch (ConflictException e) { throw new RpcException(new Grpc.Core.Status(StatusCode.Aborted, $"concurrent update, try again: {e.Message}")); }
        catch (SnapshotCompactedException e) { throw new RpcException(new Grpc.Core.Status(StatusCode.Aborted, e.Message)); }
        catch (StoreUnavailableException e)
        {
            LogStoreUnavailable(e.Message);
            throw new RpcException(new Grpc.Core.Status(StatusCode.Unavailable, $"store unavailable: {e.Message}"));
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested)
        {
            throw new RpcException(new Grpc.Core.Status(StatusCode.Cancelled, "request cancelled"));
        }
        catch (Exception e)
        {
            LogUnexpected(e);
            throw new RpcException(new Grpc.Core.Status(StatusCode.Internal, "internal error; see the daemon's log"));
        }
    }

    [LoggerMessage(EventId = 200, Level = LogLevel.Information, Message = "Created service {Id} {Key}")]
    private partial void LogCreatedService(string id, string key);

    [LoggerMessage(EventId = 201, Level = LogLevel.Information, Message = "Updated service {Id}")]
    private partial void LogUpdatedService(string id);

    [LoggerMessage(EventId = 202, Level = LogLevel.Information, Message = "Deleted service {Id} and its servers")]
    private partial void LogDeletedService(string id);

    [LoggerMessage(EventId = 203, Level = LogLevel.Information, Message = "Created server {Server} of service {Id}")]
    private partial void LogCreatedServer(string id, string server);

    [LoggerMessage(EventId = 204, Level = LogLevel.Information, Message = "Updated server {Server} of service {Id}")]
    private partial void LogUpdatedServer(string id, string server);

    [LoggerMessage(EventId = 205, Level = LogLevel.Information, Message = "Deleted server {Server} of service {Id}")]
    private partial void LogDeletedServer(string id, string server);

    [LoggerMessage(EventId = 206, Level = LogLevel.Warning, Message = "Store unavailable: {Reason}")]
    private partial void LogStoreUnavailable(string reason);

    [LoggerMessage(EventId = 207, Level = LogLevel.Error, Message = "Unexpected failure in an API call")]
    private partial void LogUnexpected(Exception e);

    [LoggerMessage(EventId = 208, Level = LogLevel.Warning, Message = "Reading the dataplane's counters failed: {Reason}")]
    private partial void LogCountersFailed(string reason);

    [LoggerMessage(EventId = 209, Level = LogLevel.Warning, Message = "Compatibility mode is now {Mode}")]
    private partial void LogSettings(string mode);

    [LoggerMessage(EventId = 240, Level = LogLevel.Information, Message = "Node drained: {Drained}")]
    private partial void LogDrainedNode(bool drained);
}
