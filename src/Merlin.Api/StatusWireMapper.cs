using Google.Protobuf.WellKnownTypes;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Contracts;

namespace Merlin.Api;

/// <summary>The node's status, counters and health verdicts on the wire (the Status and Counters RPCs, List, <c>/status</c>).</summary>
public static class StatusWireMapper
{
    public static StatusResponse ToWire(NodeStatus s)
    {
        var response = new StatusResponse
        {
            Version = s.Version,
            StoreBackend = s.StoreBackend,
            StoreReachable = s.StoreReachable,
            Dataplane = s.Dataplane,
            ReconcilePasses = (ulong)s.ReconcilePasses,
            ReconcileErrors = (ulong)s.ReconcileErrors,
            OperationsApplied = (ulong)s.OperationsApplied,
            LastError = s.LastError ?? "",
            Services = (uint)s.Services,
            Servers = (uint)s.Servers,
            Ready = s.Ready,
            ServersUp = (uint)s.ServersUp,
            ServersDown = (uint)s.ServersDown,
            ServersUnknown = (uint)s.ServersUnknown,
            Announcer = s.Announcer,
            AnnouncerState = s.AnnouncerState,
            AnnouncerHealthy = s.AnnouncerHealthy,
            AnnouncerDetail = s.AnnouncerDetail,
            AnnouncerRestarts = (ulong)s.AnnouncerRestarts,
            NodeDrained = s.NodeDrained,
        };
        if (s.SinceLastReconcile is { } since) response.SinceLastReconcile = Duration.FromTimeSpan(since);
        // Present (even at 0) only once the store was read: unset means "not counted".
        if (s.Origins is { } origins)
        {
            response.ServicesNotByMerlin = (uint)origins.ServicesNotByMerlin;
            response.ServersNotByMerlin = (uint)origins.ServersNotByMerlin;
            response.OrphanedServers = (uint)origins.OrphanedServers;
        }
        foreach (var sysctl in s.Sysctls)
            response.Sysctls.Add(new StatusResponse.Types.Sysctl { Name = sysctl.Name, Want = sysctl.Want, Have = sysctl.Have ?? "", Managed = sysctl.Managed, Why = sysctl.Why });
        response.Warnings.AddRange(s.Warnings);
        if (s.AnnouncerSince is { } announcerSince) response.AnnouncerSince = Timestamp.FromDateTimeOffset(announcerSince);
        foreach (var vip in s.Vips)
            response.Vips.Add(new StatusResponse.Types.Vip { Address = vip.Address.ToString(), Announced = vip.Announced, Management = vip.Management });
        foreach (var t in s.Tables)
            response.Tables.Add(new StatusResponse.Types.Table { Service = t.Service.ToString(), Hash = t.Hash, Problem = t.Problem ?? "", Changes = (ulong)t.Changes, SlotsMoved = (ulong)t.SlotsMoved });
        return response;
    }

    public static CountersResponse ToWire(NodeCounters counters)
    {
        var response = new CountersResponse { Dataplane = counters.Dataplane };
        foreach (var service in counters.Services)
        {
            var wire = new CountersResponse.Types.Service { Key = WireMapper.ToWire(service.Service), Totals = ToWire(service.Totals) };
            foreach (var server in service.Servers)
                wire.Servers.Add(new CountersResponse.Types.Server
                {
                    Key = WireMapper.ToWire(server.Server),
                    ActiveConnections = server.ActiveConnections,
                    InactiveConnections = server.InactiveConnections,
                    Totals = ToWire(server.Totals),
                });
            response.Services.Add(wire);
        }
        return response;
    }

    /// <summary>Adds each listed server's verdict to its item; records the model refuses (or nobody checks) get none.</summary>
    public static void AddHealth(ListResponse response, IReadOnlyList<ServerHealthStatus> health)
    {
        if (health.Count == 0) return;
        var verdicts = health.ToDictionary(r => (r.Service, r.Server));
        foreach (var item in response.Items)
        {
            if (WireMapper.TryToModel(item.Service, out var service) is not null) continue;
            foreach (var server in item.Servers)
            {
                if (server.Key is null || !Endpoints.TryParseAddress(server.Key.Ip, out var ip) || server.Key.Port > ushort.MaxValue) continue;
                if (!verdicts.TryGetValue((service!.Key, new RealServerKey(ip, (ushort)server.Key.Port)), out var v)) continue;
                var wire = new ServerHealth { Key = server.Key.Clone(), Verdict = v.Verdict.ToString().ToLowerInvariant(), Detail = v.Detail };
                if (v.Since is { } since) wire.Since = Timestamp.FromDateTimeOffset(since);
                item.Health.Add(wire);
            }
        }
    }

    private static Traffic ToWire(TrafficCounters t) =>
        new() { Connections = t.Connections, InPackets = t.InPackets, OutPackets = t.OutPackets, InBytes = t.InBytes, OutBytes = t.OutBytes };
}
