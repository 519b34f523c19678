using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Model;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Microsoft.Extensions.Logging;
using WireServer = Merlin.Contracts.RealServer;

namespace Merlin.Api;

/// <summary>
/// Drain: the API records a deadline with the server (its configured weight stays in the record; the
/// reconciler programs weight 0 while a deadline is set) and <see cref="DrainExpiry"/> removes the server
/// once the deadline has passed. Undrain clears the deadline, and the configured weight returns.
/// </summary>
public sealed partial class MerlinService
{
    public override Task<Empty> DrainServer(DrainRequest request, ServerCallContext context) => Guard(context, async ct =>
    {
        var (serviceId, ip, port) = DrainTarget(request?.Server, "server.");
        if (request!.Period is null) throw Invalid(new("period", "required (e.g. 300s)"));
        if (WireMapper.TryDuration(request.Period, "period", out var period) is { } durationError) throw Invalid(durationError);
        if (Validation.DrainPeriod(period, "period") is { } periodError) throw Invalid(periodError);

        var deadline = time.GetUtcNow() + period;
        var endpoint = Endpoints.Format(System.Net.IPAddress.Parse(ip), (ushort)port);
        var compat = await GoMerlinCompatAsync(ct);
        await UpdateOptimisticallyAsync(
            async () => Record(await store.GetServerAsync(serviceId, ip, port, ct)
                ?? throw NotFound($"server {endpoint} of service {serviceId} does not exist")),
            current =>
            {
                var next = current.Clone();
                next.DrainDeadline = Timestamp.FromDateTimeOffset(deadline);
                // A Go merlin ignores the deadline: its nodes would keep sending new connections, then cut them.
                if (compat && WireMapper.TryToModel(next, out var model) is null) RefuseIfGoMerlinCannot(GoMerlin.Check(model!));
                return next;
            },
            (next, version) => store.UpdateServerAsync(StoredRecords.Of(next), version, ct));
        LogDrainingServer(serviceId, endpoint, Durations.Format(period), deadline);
        return Done;
    });

    public override Task<Empty> UndrainServer(WireServer request, ServerCallContext context) => Guard(context, async ct =>
    {
        var (serviceId, ip, port) = DrainTarget(request, "");
        var endpoint = Endpoints.Format(System.Net.IPAddress.Parse(ip), (ushort)port);
        var written = await UpdateOptimisticallyAsync(
            async () => Record(await store.GetServerAsync(serviceId, ip, port, ct)
                ?? throw NotFound($"server {endpoint} of service {serviceId} does not exist (a drain that reached its deadline removed it)")),
            current =>
            {
                var next = current.Clone();
                next.DrainDeadline = null;
                return next;
            },
            (next, version) => store.UpdateServerAsync(StoredRecords.Of(next), version, ct));
        if (written) LogUndrainedServer(serviceId, endpoint);
        return Done;
    });

    /// <summary>The server a drain names, in the store's spelling; errors name the request's field (<c>server.key.ip</c>).</summary>
    private static (string ServiceId, string Ip, uint Port) DrainTarget(WireServer? server, string under)
    {
        if (server is null) throw Invalid(new(under.TrimEnd('.') is { Length: > 0 } f ? f : "server", "required (serviceID and key)"));
        if (Validation.Id(server.ServiceID, under + "serviceID") is { } idError) throw Invalid(idError);
        if (server.Key is null) throw Invalid(new(under + "key", "required (ip and port)"));
        if (Validation.Address(server.Key.Ip, under + "key.ip", out var address) is { } ipError) throw Invalid(ipError);
        if (Validation.Port(server.Key.Port, under + "key.port") is { } portError) throw Invalid(portError);
        return (server.ServiceID, address!.ToString(), server.Key.Port);
    }

    [LoggerMessage(EventId = 230, Level = LogLevel.Information, Message = "Draining server {Server} of service {Id} for {Period}: weight 0 now, removed at {Deadline:O}")]
    private partial void LogDrainingServer(string id, string server, string period, DateTimeOffset deadline);

    [LoggerMessage(EventId = 231, Level = LogLevel.Information, Message = "Undrained server {Server} of service {Id}: its configured weight returns")]
    private partial void LogUndrainedServer(string id, string server);
}
