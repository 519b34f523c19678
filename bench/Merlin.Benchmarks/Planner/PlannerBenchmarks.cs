using System.Net;
using BenchmarkDotNet.Attributes;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Benchmarks.Planner;

/// <summary>
/// The planner at the control-plane issue's size: 10,000 services × 10 servers. NoChange is every
/// steady-state resync (goal &lt; 20 ms); OnePercentChanged changes the weight of 1% of the servers and
/// replaces 1% of the services. DesiredFromSnapshot is the other CPU cost of a pass: turning the
/// store's protobuf records into the model.
/// </summary>
[MemoryDiagnoser]
public class PlannerBenchmarks
{
    private const int Services = 10_000, ServersPer = 10;
    private DataplaneState _desired = null!, _same = null!, _onePercent = null!;
    private List<(Wire.VirtualService Service, List<Wire.RealServer> Servers)> _records = null!;

    [GlobalSetup]
    public void Setup()
    {
        _desired = Build(changed: _ => false, replaced: _ => false);
        _same = Build(changed: _ => false, replaced: _ => false); // equal values, distinct instances
        _onePercent = Build(changed: i => i % 100 == 7, replaced: i => i % 100 == 42);
        _records = new(Services);
        for (var i = 0; i < Services; i++)
        {
            var svc = new Wire.VirtualService
            {
                Id = $"svc-{i}",
                Key = new Wire.VirtualService.Types.Key { Ip = Vip(i).ToString(), Port = 80, Protocol = Wire.Protocol.Tcp },
                Config = new Wire.VirtualService.Types.Config { Scheduler = "mh", Flags = { "flag-2" } },
            };
            var servers = Enumerable.Range(0, ServersPer).Select(j => new Wire.RealServer
            {
                ServiceID = svc.Id,
                Key = new Wire.RealServer.Types.Key { Ip = Rip(i, j).ToString(), Port = 8080 },
                Config = new Wire.RealServer.Types.Config { Weight = 1, Forward = Wire.ForwardMethod.Route },
            }).ToList();
            _records.Add((svc, servers));
        }
        if (Merlin.Reconciler.Planner.Plan(_desired, _same).Count != 0) throw new InvalidOperationException("no-change plan is not empty");
    }

    [Benchmark(Baseline = true)]
    public int NoChange() => Merlin.Reconciler.Planner.Plan(_desired, _same).Count;

    [Benchmark]
    public int OnePercentChanged() => Merlin.Reconciler.Planner.Plan(_desired, _onePercent).Count;

    [Benchmark]
    public int DesiredFromSnapshot() => DesiredState.From(Snapshot()).State.Services.Count;

    /// <summary>A List as a store returns it: records read afresh, so each run decodes them (a record decodes once, then keeps its model).</summary>
    private StoreSnapshot Snapshot() =>
        new([.. _records.Select(r => new StoreItem(StoredRecords.Of(r.Service), r.Servers.ConvertAll(StoredRecords.Of)))], 1);

    private static IPAddress Vip(int i) => new([198, 18, (byte)(i / 250), (byte)(i % 250 + 1)]);

    private static IPAddress Rip(int i, int j) => new([198, 19, (byte)j, (byte)(i % 250 + 1)]);

    private static DataplaneState Build(Func<int, bool> changed, Func<int, bool> replaced)
    {
        var services = new Dictionary<ServiceKey, ServiceState>(Services);
        for (var i = 0; i < Services; i++)
        {
            var key = ServiceKey.ForAddress(Vip(i), replaced(i) ? (ushort)81 : (ushort)80, Model.Protocol.Tcp);
            var servers = new Dictionary<RealServerKey, RealServerConfig>(ServersPer);
            for (var j = 0; j < ServersPer; j++)
            {
                servers[new RealServerKey(Rip(i, j), (ushort)(8080 + i / 250))] =
                    new RealServerConfig { Weight = changed(i) && j == 0 ? 2u : 1u, Forward = Model.ForwardMethod.Route };
            }
            services[key] = new ServiceState(key, new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2, PersistenceNetmask = 32 }, servers);
        }
        return new DataplaneState(services);
    }
}
