using System.Net;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Merlin.Api;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>The node's status in the model's terms, put on the wire: every field where it always was, and presence kept.</summary>
public class StatusWireMapperTests
{
    private static readonly DateTimeOffset Since = new(2026, 12, 6, 23, 0, 0, TimeSpan.Zero);

    [Fact]
    public void EveryField_LandsInItsWireField()
    {
        var status = new NodeStatus
        {
            Version = "0.1.0",
            StoreBackend = "sqlite",
            StoreReachable = true,
            Dataplane = "nftables",
            SinceLastReconcile = TimeSpan.FromMilliseconds(1500),
            ReconcilePasses = 7,
            ReconcileErrors = 2,
            OperationsApplied = 40,
            LastError = "the kernel refused",
            Services = 3,
            Servers = 9,
            Ready = true,
            Origins = new RecordOrigins(1, 2, 3),
            Sysctls = [new SysctlStatus("net.ipv4.vs.sloppy_tcp", "1", null, false, "failover")],
            Warnings = ["198.18.0.10:80/tcp: route (DSR) servers need --interface", "no VIP is announced: drained"],
            ServersUp = 4,
            ServersDown = 1,
            ServersUnknown = 2,
            Announcer = "vrrp",
            AnnouncerState = "MASTER",
            AnnouncerHealthy = true,
            AnnouncerDetail = "keepalived running",
            AnnouncerRestarts = 5,
            AnnouncerSince = Since,
            Vips = [new VipStatus(IPAddress.Parse("198.18.0.10"), true, false), new VipStatus(IPAddress.Parse("2001:db8::1"), false, true)],
            NodeDrained = true,
        };

        var expected = new StatusResponse
        {
            Version = "0.1.0",
            StoreBackend = "sqlite",
            StoreReachable = true,
            Dataplane = "nftables",
            SinceLastReconcile = new Duration { Seconds = 1, Nanos = 500_000_000 },
            ReconcilePasses = 7,
            ReconcileErrors = 2,
            OperationsApplied = 40,
            LastError = "the kernel refused",
            Services = 3,
            Servers = 9,
            Ready = true,
            ServicesNotByMerlin = 1,
            ServersNotByMerlin = 2,
            OrphanedServers = 3,
            ServersUp = 4,
            ServersDown = 1,
            ServersUnknown = 2,
            Announcer = "vrrp",
            AnnouncerState = "MASTER",
            AnnouncerHealthy = true,
            AnnouncerDetail = "keepalived running",
            AnnouncerRestarts = 5,
            AnnouncerSince = Timestamp.FromDateTimeOffset(Since),
            NodeDrained = true,
        };
        expected.Sysctls.Add(new StatusResponse.Types.Sysctl { Name = "net.ipv4.vs.sloppy_tcp", Want = "1", Have = "", Managed = false, Why = "failover" });
        expected.Warnings.Add("198.18.0.10:80/tcp: route (DSR) servers need --interface");
        expected.Warnings.Add("no VIP is announced: drained");
        expected.Vips.Add(new StatusResponse.Types.Vip { Address = "198.18.0.10", Announced = true });
        expected.Vips.Add(new StatusResponse.Types.Vip { Address = "2001:db8::1", Management = true });

        var wire = StatusWireMapper.ToWire(status);

        Assert.Equal(expected, wire);
        Assert.Equal(expected.ToByteArray(), wire.ToByteArray());
    }

    [Fact]
    public void BeforeTheFirstPass_TheOptionalFieldsAreAbsent_NotZero()
    {
        var wire = StatusWireMapper.ToWire(new NodeStatus { Version = "0.1.0", StoreBackend = "etcd3", Dataplane = "none", Announcer = "static", Origins = null });

        Assert.False(wire.HasServicesNotByMerlin);
        Assert.False(wire.HasServersNotByMerlin);
        Assert.Null(wire.SinceLastReconcile);
        Assert.Null(wire.AnnouncerSince);
        Assert.Equal("""{ "version": "0.1.0", "storeBackend": "etcd3", "dataplane": "none", "announcer": "static" }""", Google.Protobuf.JsonFormatter.Default.Format(wire));
    }

    [Fact]
    public void NoRecordsNotByMerlin_IsZeroThatIsPresent()
    {
        var wire = StatusWireMapper.ToWire(new NodeStatus { Version = "0.1.0", StoreBackend = "sqlite", Dataplane = "none", Announcer = "static", Origins = new RecordOrigins(0, 0, 0) });

        Assert.True(wire.HasServicesNotByMerlin);
        Assert.True(wire.HasServersNotByMerlin);
        Assert.Equal(0u, wire.ServicesNotByMerlin);
    }

    [Fact]
    public void Counters_KeepServicesAndServersInOrder()
    {
        var web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Merlin.Model.Protocol.Tcp);
        var rs = new RealServerKey(IPAddress.Parse("198.18.1.1"), 8080);
        var counters = new NodeCounters("ipvs", [new ServiceCounters(web, new TrafficCounters(1, 2, 3, 4, 5), [new ServerCounters(rs, 6, 7, new TrafficCounters(8, 9, 10, 11, 12))])]);

        var wire = StatusWireMapper.ToWire(counters);

        Assert.Equal("ipvs", wire.Dataplane);
        var service = Assert.Single(wire.Services);
        Assert.Equal(WireMapper.ToWire(web), service.Key);
        Assert.Equal(new Traffic { Connections = 1, InPackets = 2, OutPackets = 3, InBytes = 4, OutBytes = 5 }, service.Totals);
        var server = Assert.Single(service.Servers);
        Assert.Equal(WireMapper.ToWire(rs), server.Key);
        Assert.Equal((6u, 7u), (server.ActiveConnections, server.InactiveConnections));
        Assert.Equal(12ul, server.Totals.OutBytes);
    }
}
