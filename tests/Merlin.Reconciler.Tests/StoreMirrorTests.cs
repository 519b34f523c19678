using Google.Protobuf.WellKnownTypes;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Contracts;

namespace Merlin.Reconciler.Tests;

/// <summary>
/// The incremental path (a <see cref="StoreMirror"/> moved by watch events, planning only what they touched)
/// against the full path (a List turned into desired state by <see cref="DesiredState.Build"/>, planned whole),
/// over random writes that include what a store can really hold: bad records, two services with one key,
/// servers of a service deleted by a Go merlin, drains, health checks out of bounds, records not by Merlin.
/// </summary>
public sealed class StoreMirrorTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)] // a dataplane that programs md-table services' stored tables (nftables)
    public void Incremental_EqualsFull_ForRandomWriteSequences(bool withTables)
    {
        for (var seed = 0; seed < 400; seed++)
        {
            try
            {
                RunSequence(seed, withTables);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new Xunit.Sdk.XunitException($"seed {seed}: {e.Message}");
            }
        }
    }

    [Fact]
    public void Apply_ReturnsNull_OnAResyncOrAPutWithoutItsRecord()
    {
        var store = new ModelStore(new Random(1));
        var mirror = StoreMirror.Load(store.Snapshot());
        Assert.Null(mirror.Apply([new StoreChange(StoreChangeKind.Resync, "", 5)]));
        Assert.Null(StoreMirror.Load(store.Snapshot()).Apply([new StoreChange(StoreChangeKind.Put, "services/a", 5)]));
        // Keys outside services/ and servers/ (settings, indexes) change nothing.
        Assert.Empty(StoreMirror.Load(store.Snapshot()).Apply([new StoreChange(StoreChangeKind.Put, "settings", 5)])!);
    }

    [Fact]
    public void Apply_ReturnsNull_OnATablePutWithoutItsTable()
    {
        var store = new ModelStore(new Random(1));
        Assert.Null(StoreMirror.Load(store.Snapshot(), withTables: true).Apply([new StoreChange(StoreChangeKind.Put, "tables/a", 5)]));
    }

    private static void RunSequence(int seed, bool withTables)
    {
        var random = new Random(seed);
        var store = new ModelStore(random);
        // Some history before the mirror's List, some after.
        for (var i = random.Next(0, 20); i > 0; i--) store.RandomWrite();
        var mirror = StoreMirror.Load(store.Snapshot(), withTables);
        AssertSame(DesiredState.Build(store.Snapshot(), withTables), StoreOrigins.Count(store.Snapshot()), mirror);

        List<StoreChange> previous = [];
        for (var step = 0; step < 30; step++)
        {
            var before = DesiredState.Build(store.Snapshot(), withTables).State;
            var events = new List<StoreChange>();
            for (var i = random.Next(1, 6); i > 0; i--) events.AddRange(store.RandomWrite());
            // A watch resumed after a reconnect delivers the last revision it saw again; the mirror must not mind.
            if (previous.Count > 0 && random.Next(4) == 0) events.InsertRange(0, previous.Where(c => c.Revision == previous[^1].Revision));
            previous = events.Count > 0 ? events : previous;
            var touched = mirror.Apply(events);
            Assert.NotNull(touched);

            var full = DesiredState.Build(store.Snapshot(), withTables);
            AssertSame(full, StoreOrigins.Count(store.Snapshot()), mirror);
            // The kernel as the last pass left it: the plans of both paths from there are the same.
            Assert.Equal(Planner.Plan(full.State, before), Planner.Plan(mirror.Desired, before, touched!));
        }
    }

    private static void AssertSame(
        (DataplaneState State, IReadOnlyList<RejectedRecord> Rejected, IReadOnlyList<HealthTarget> Checks) full, StoreOrigins origins, StoreMirror mirror)
    {
        Assert.True(full.State.SameAs(mirror.Desired), "desired states differ");
        // Kept as keys come and go; the full build walks its services for them.
        Assert.Equal(full.State.ServerCount, mirror.Desired.ServerCount);
        Assert.True(full.State.Addresses.SetEquals(mirror.Desired.Addresses), "VIPs differ");
        Assert.Equal(full.Rejected, mirror.Rejected);
        Assert.Equal(full.Checks, mirror.Checks);
        Assert.Equal(origins, mirror.Origins);
    }

    /// <summary>A store as etcd holds it (Go merlin writes included), its List and its watch events.</summary>
    private sealed class ModelStore(Random random)
    {
        private static readonly string[] Ids = ["a", "b", "c", "d", "e", "f", "web-1", "web-10"];
        private static readonly string[] Vips = ["198.18.0.10", "198.18.0.11", "2001:db8::10"];
        private static readonly string[] ServerIps = ["198.18.1.20", "198.18.1.21", "198.18.1.22", "2001:db8::20"];

        private readonly SortedDictionary<string, VirtualService> _services = new(StringComparer.Ordinal);
        // Stored lookup tables by service id, written in the transaction of a write to an md-table service.
        private readonly SortedDictionary<string, byte[]> _tables = new(StringComparer.Ordinal);
        private readonly SortedDictionary<(string Id, string Endpoint), RealServer> _servers = new(Comparer<(string, string)>.Create(
            (x, y) => string.CompareOrdinal(x.Item1, y.Item1) is var c and not 0 ? c : string.CompareOrdinal(x.Item2, y.Item2)));
        private long _revision = 1;

        public StoreSnapshot Snapshot()
        {
            var items = _services.Select(s => new StoreItem(StoredRecords.Of(s.Value), _servers.Where(kv => kv.Key.Id == s.Key).Select(kv => StoredRecords.Of(kv.Value)).ToList())
                { Table = _tables.GetValueOrDefault(s.Key) }).ToList();
            var orphans = _servers.Where(kv => !_services.ContainsKey(kv.Key.Id)).Select(kv => new OrphanedServer(kv.Key.Id, kv.Key.Endpoint, StoredRecords.Of(kv.Value))).ToList();
            return new StoreSnapshot(items, _revision) { OrphanedServers = orphans.Count, Orphans = orphans };
        }

        /// <summary>One write, as the events of one transaction.</summary>
        public List<StoreChange> RandomWrite()
        {
            var revision = ++_revision;
            var id = Ids[random.Next(Ids.Length)];
            var events = new List<StoreChange>();
            switch (random.Next(10))
            {
                case 0 or 1 or 2:
                {
                    // A create through Merlin also removes servers a Go merlin's delete left under the id.
                    var service = RandomService(id);
                    _services[id] = service;
                    events.Add(new StoreChange(StoreChangeKind.Put, $"services/{id}", revision) { Service = StoredRecords.Of(service) });
                    if (random.Next(2) == 0) DeleteServersOf(id, revision, events);
                    break;
                }
                case 3:
                {
                    // Merlin deletes the servers with the service; a Go merlin only the service.
                    if (!_services.Remove(id)) break;
                    events.Add(new StoreChange(StoreChangeKind.Delete, $"services/{id}", revision));
                    if (_tables.Remove(id)) events.Add(new StoreChange(StoreChangeKind.Delete, $"tables/{id}", revision));
                    if (random.Next(3) != 0) DeleteServersOf(id, revision, events);
                    break;
                }
                case 4 or 5 or 6 or 7:
                {
                    var server = RandomServer(id);
                    var endpoint = $"{server.Key.Ip}:{server.Key.Port}";
                    _servers[(id, endpoint)] = server;
                    events.Add(new StoreChange(StoreChangeKind.Put, $"servers/{id}/{endpoint}", revision) { Server = StoredRecords.Of(server) });
                    break;
                }
                default:
                {
                    var mine = _servers.Keys.Where(k => k.Id == id).ToList();
                    if (mine.Count == 0) break;
                    var key = mine[random.Next(mine.Count)];
                    _servers.Remove(key);
                    events.Add(new StoreChange(StoreChangeKind.Delete, $"servers/{id}/{key.Endpoint}", revision));
                    break;
                }
            }
            if (events.Count == 0) _revision--; // nothing written
            else DeriveTable(id, revision, events);
            return events;
        }

        /// <summary>As a store given the API's table function does: a new table whenever an md-table service or its servers change.</summary>
        private void DeriveTable(string id, long revision, List<StoreChange> events)
        {
            if (!_services.TryGetValue(id, out var service)) return;
            if (service.Config.Scheduler == "mh" && service.Config.Flags.Contains("flag-3"))
            {
                var table = new byte[8];
                random.NextBytes(table);
                _tables[id] = table;
                events.Add(new StoreChange(StoreChangeKind.Put, $"tables/{id}", revision) { Table = table });
            }
            else if (_tables.Remove(id))
            {
                events.Add(new StoreChange(StoreChangeKind.Delete, $"tables/{id}", revision));
            }
        }

        private void DeleteServersOf(string id, long revision, List<StoreChange> events)
        {
            foreach (var key in _servers.Keys.Where(k => k.Id == id).ToList())
            {
                _servers.Remove(key);
                events.Add(new StoreChange(StoreChangeKind.Delete, $"servers/{id}/{key.Endpoint}", revision));
            }
        }

        private VirtualService RandomService(string id)
        {
            var service = new VirtualService
            {
                Id = id,
                Key = new VirtualService.Types.Key { Ip = Vips[random.Next(Vips.Length)], Port = (uint)(random.Next(2) == 0 ? 80 : 443), Protocol = Protocol.Tcp },
                Config = new VirtualService.Types.Config { Scheduler = random.Next(8) switch { 0 => "nope", 1 => "rr", 2 => "mh", _ => "wrr" } },
            };
            // A flag the Go merlin accepted on a scheduler without flags: programmed without it, reported.
            if (random.Next(6) == 0) service.Config.Flags.Add("flag-1");
            // An md-table service: the API stores its lookup table with every write to it.
            else if (service.Config.Scheduler == "mh" && random.Next(2) == 0) service.Config.Flags.Add("flag-3");
            return random.Next(3) == 0 ? service : RecordDigest.Stamped(service);
        }

        private RealServer RandomServer(string id)
        {
            var server = new RealServer
            {
                ServiceID = id,
                Key = new RealServer.Types.Key { Ip = ServerIps[random.Next(ServerIps.Length)], Port = (uint)(random.Next(2) == 0 ? 8080 : 80) },
                Config = new RealServer.Types.Config { Weight = (uint)random.Next(0, 4), Forward = ForwardMethod.Route },
            };
            if (random.Next(5) == 0) server.DrainDeadline = Timestamp.FromDateTimeOffset(DateTimeOffset.UnixEpoch.AddDays(20_000));
            if (random.Next(4) == 0)
            {
                server.HealthCheck = new RealServer.Types.HealthCheck
                {
                    Endpoint = "http://:8080/healthz",
                    // Sometimes shorter than the API allows today: programmed, checked at the bound, reported.
                    Period = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(random.Next(2) == 0 ? 2000 : 10)),
                    Timeout = Duration.FromTimeSpan(TimeSpan.FromMilliseconds(random.Next(2) == 0 ? 1000 : 5)),
                    UpThreshold = 1,
                    DownThreshold = 1,
                };
            }
            return random.Next(3) == 0 ? server : RecordDigest.Stamped(server);
        }
    }
}
