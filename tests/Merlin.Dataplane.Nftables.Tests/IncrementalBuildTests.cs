using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Text.Json;
using System.Text.Json.Nodes;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// A build after a change formats only the services whose inputs changed (their state object or
/// their server set's analysis), and gives exactly what a build that remembers nothing but the
/// kernel's state records (the plain algorithm, one vote per service and server) gives.
/// </summary>
public class IncrementalBuildTests
{
    private static readonly ServiceState A = Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80));
    private static readonly ServiceState B = Service(Tcp("198.18.0.11", 80), Route("198.18.1.13", 80), Route("198.18.1.14", 80));
    private static readonly ServiceState C = Service(Tcp("198.18.0.12", 80), Config("sh"), Route("198.18.1.12", 80), Route("198.18.1.15", 80));

    /// <summary>
    /// The previous build as adoption would see it: ids from the kernel's state records (one per
    /// service and server), the group names, nothing of what builds keep for the next one.
    /// </summary>
    internal static Assignment Plain(Layout.Layout layout)
    {
        var elements = layout.Ruleset.Table("netdev", "merlin")?.Sets["state"].Content.Elements() ?? [];
        var decoded = StateRecords.Decode(elements.Select(e => (uint.Parse(e.Key, CultureInfo.InvariantCulture), Comment(e.Element))));
        return new Assignment(decoded.Groups, layout.Assignment.Groups, decoded.ServiceIds, decoded.ServerIds) { ListIds = decoded.ListIds };
    }

    private static string Comment(string element)
    {
        int at = element.IndexOf(" comment \"", StringComparison.Ordinal);
        return element[(at + 10)..^1];
    }

    private static void AssertSameAsPlain(Layout.Layout incremental, Layout.Layout plain)
    {
        Assert.Equal(ScriptRenderer.Full(plain.Ruleset), ScriptRenderer.Full(incremental.Ruleset));
        Assert.Equal(plain.Assignment.ServiceIds.OrderBy(kv => kv.Value), incremental.Assignment.ServiceIds.OrderBy(kv => kv.Value));
        Assert.Equal(plain.Assignment.ListIds.OrderBy(kv => kv.Value), incremental.Assignment.ListIds.OrderBy(kv => kv.Value));
        Assert.Equal(plain.Assignment.ServiceGroups.OrderBy(kv => kv.Key.ToString()), incremental.Assignment.ServiceGroups.OrderBy(kv => kv.Key.ToString()));
        Assert.Equal(plain.Issues.Select(i => i.ToString()), incremental.Issues.Select(i => i.ToString()));
    }

    [Fact]
    public void WeightChangeInOneService_FormatsOnlyThatService_AndKeepsEveryOtherPiece()
    {
        var cache = new BuildCache();
        var first = Build(State(A, B, C), cache: cache);
        var before = cache.Services.ToDictionary();   // the cache's own dictionary may be changed in place
        var changedB = Service(B.Key, Route("198.18.1.13", 80, 3), Route("198.18.1.14", 80));

        var second = Build(State(A, changedB, C), first.Assignment, cache: cache);

        var after = cache.Services;
        foreach (var key in new[] { A.Key, C.Key })
        {
            Assert.Same(before[key].Plan, after[key].Plan);
            Assert.Same(before[key].Record, after[key].Record);
            Assert.Same(before[key].Dispatch, after[key].Dispatch);
            Assert.Same(before[key].Set, after[key].Set);
        }
        Assert.NotSame(before[B.Key].Plan, after[B.Key].Plan);
        Assert.NotSame(before[B.Key].Set, after[B.Key].Set);
        // B's service record says nothing that changed (its id, config, group and list are the same): kept too.
        Assert.Same(before[B.Key].Record, after[B.Key].Record);
        // The chains of every group are the same objects: nothing of them was formatted again.
        var chainsBefore = first.Ruleset.Table("netdev", "merlin")!.Chains;
        foreach (var (name, chain) in second.Ruleset.Table("netdev", "merlin")!.Chains)
            if (chain.Base is null) Assert.Same(chainsBefore[name], chain);
        // The transaction touches B's map and the state records only.
        var script = ScriptRenderer.Diff(first.Ruleset, second.Ruleset).TrimEnd('\n').Split('\n');
        var groupOfB = second.Assignment.ServiceGroups[B.Key];
        Assert.All(script, line => Assert.Matches($@"^(delete|add) (element netdev merlin ({groupOfB}|state) |set netdev merlin marker)", line));

        AssertSameAsPlain(second, Build(State(A, changedB, C), Plain(first)));
    }

    [Fact]
    public void ServicesRebuiltAsNewObjects_WithTheSameContent_GiveTheSameRuleset()
    {
        var cache = new BuildCache();
        var first = Build(State(A, B, C), cache: cache);
        var before = cache.Services[A.Key];
        var copies = State(A with { }, B with { }, C with { });

        var second = Build(copies, first.Assignment, cache: cache);

        Assert.Equal("", ScriptRenderer.Diff(first.Ruleset, second.Ruleset));
        // Found by content: the same analysis, and the same plan (its state is equal, if not the same object).
        Assert.Same(before.Set, cache.Services[A.Key].Set);
        Assert.Same(before.Plan, cache.Services[A.Key].Plan);
    }

    [Fact]
    public void AMacChange_FormatsTheServicesOfThatServerSetAgain_AndOnlyThose()
    {
        var macs = MacsFor([A, B, C]);
        var cache = new BuildCache();
        var first = Build(State(A, B, C), macs: macs, cache: cache);
        var before = cache.Services.ToDictionary();
        var moved = new Dictionary<IPAddress, PhysicalAddress>(macs) { [IPAddress.Parse("198.18.1.13")] = PhysicalAddress.Parse("02-00-00-00-99-99") };

        var second = Build(State(A, B, C), first.Assignment, macs: moved, cache: cache);

        Assert.Same(before[A.Key].Plan, cache.Services[A.Key].Plan);
        Assert.NotSame(before[B.Key].Plan, cache.Services[B.Key].Plan);
        AssertSameAsPlain(second, Build(State(A, B, C), Plain(first), macs: moved));
    }

    [Fact]
    public void AnotherSeed_FormatsEveryChainAgain_ButKeepsTheIds()
    {
        var first = Build(State(A, B, C));
        var options = Options() with { HashSeed = 0x1234 };

        var second = Build(State(A, B, C), first.Assignment, options);

        Assert.Contains("seed 0x1234", second.Ruleset.Table("netdev", "merlin")!.Chains[second.Assignment.ServiceGroups[A.Key] + "_4p"].Rules[1], StringComparison.Ordinal);
        Assert.Equal(first.Assignment.ServiceIds, second.Assignment.ServiceIds);
        AssertSameAsPlain(second, Build(State(A, B, C), Plain(first), options));
    }

    [Fact]
    public void MergedServerRecords_KeepTheIdMostOfTheirUsersHad_CountingEveryServiceOfASet()
    {
        // Step 1: X at weight 1 in two services, at weight 2 (with Y) in a third.
        ServiceState S(int n, uint weightOfX, bool withY) => withY
            ? Service(Tcp($"198.18.0.{n}", 80), Route("198.18.1.11", 80, weightOfX), Route("198.18.1.12", 80))
            : Service(Tcp($"198.18.0.{n}", 80), Route("198.18.1.11", 80, weightOfX), Route("198.18.1.13", 80));
        var first = Build(State(S(1, 1, false), S(2, 1, false), S(3, 2, true)));
        // Step 2: two more services with the third one's servers: X at weight 2 now has three users.
        var second = Build(State(S(1, 1, false), S(2, 1, false), S(3, 2, true), S(4, 2, true), S(5, 2, true)), first.Assignment);
        // Step 3: the first two move X to weight 2 as well (their other server stays apart).
        var after = State(S(1, 2, false), S(2, 2, false), S(3, 2, true), S(4, 2, true), S(5, 2, true));

        var third = Build(after, second.Assignment);

        AssertSameAsPlain(third, Build(after, Plain(second)));
        // X at weight 2 keeps the id its three users had, not the lower one of the other two.
        static uint IdOfX(Layout.Layout layout, uint weight) => layout.Assignment.ServerRecordIds!
            .Single(kv => kv.Key.StartsWith($"198.18.1.11 80 {weight} ", StringComparison.Ordinal)).Value;
        Assert.True(IdOfX(first, 1) < IdOfX(second, 2));
        Assert.Equal(IdOfX(second, 2), IdOfX(third, 2));
    }

    /// <summary>
    /// Random change sets (weights in one service or of a server in all of them, servers and
    /// services added and removed, configs, MACs, IPv6, NAT, one-packet): after every one the
    /// incremental build equals the plain one, text for text and id for id.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void RandomChanges_IncrementalBuildEqualsThePlainBuild(int seed)
    {
        var random = new Random(seed);
        string[] pool4 = [.. Enumerable.Range(11, 8).Select(i => $"198.18.1.{i}")];
        string[] pool6 = [.. Enumerable.Range(11, 4).Select(i => $"2001:db8:1::{i:x}")];
        string[] schedulers = ["wrr", "sh", "mh"];
        ServiceState NewService(int n)
        {
            bool v6 = n % 5 == 4;
            bool nat = n % 7 == 6;
            var key = v6 ? Tcp($"2001:db8::{n + 16:x}", (ushort)(80 + n % 3)) : n % 3 == 2 ? Udp($"198.18.0.{n + 10}", 53) : Tcp($"198.18.0.{n + 10}", (ushort)(80 + n % 2));
            var pool = v6 ? pool6 : pool4;
            var servers = pool.OrderBy(_ => random.Next()).Take(random.Next(1, 4))
                .Select(a => nat ? Masq(a, 8080, (uint)random.Next(0, 4)) : Route(a, key.Port, (uint)random.Next(0, 4))).ToArray();
            return Service(key, Config(schedulers[random.Next(schedulers.Length)], onePacket: n % 6 == 5), servers);
        }
        var services = State([.. Enumerable.Range(0, 12).Select(NewService)]);
        int next = 12;
        var macs = new Dictionary<IPAddress, PhysicalAddress>();
        foreach (var a in pool4.Concat(pool6)) macs[IPAddress.Parse(a)] = MacOf(IPAddress.Parse(a));
        var cache = new BuildCache();
        var layout = Build(services, macs: macs, cache: cache);

        for (int step = 0; step < 40; step++)
        {
            var changed = new Dictionary<ServiceKey, ServiceState>(services);
            var keys = changed.Keys.OrderBy(k => k.ToString(), StringComparer.Ordinal).ToList();
            var pick = changed[keys[random.Next(keys.Count)]];
            switch (random.Next(7))
            {
                case 0:   // one server's weight in one service
                    var server = pick.Servers.Keys.OrderBy(k => k).ElementAt(random.Next(pick.Servers.Count));
                    changed[pick.Key] = pick with { Servers = new Dictionary<RealServerKey, RealServerConfig>(pick.Servers) { [server] = pick.Servers[server] with { Weight = (uint)random.Next(0, 4) } } };
                    break;
                case 1:   // one server's weight in every service that has it
                    var shared = pick.Servers.Keys.First();
                    var weight = (uint)random.Next(0, 4);
                    foreach (var s in services.Values.Where(s => s.Servers.ContainsKey(shared)))
                        changed[s.Key] = s with { Servers = new Dictionary<RealServerKey, RealServerConfig>(s.Servers) { [shared] = s.Servers[shared] with { Weight = weight } } };
                    break;
                case 2:   // a service added
                    var added = NewService(next++);
                    changed.TryAdd(added.Key, added);
                    break;
                case 3:   // a service removed
                    if (changed.Count > 2) changed.Remove(pick.Key);
                    break;
                case 4:   // a server removed (not the last) or one added
                    if (pick.Servers.Count > 1)
                        changed[pick.Key] = pick with { Servers = pick.Servers.Where(kv => !kv.Key.Equals(pick.Servers.Keys.Max())).ToDictionary() };
                    break;
                case 5:   // a config change
                    changed[pick.Key] = pick with { Config = pick.Config with { Scheduler = schedulers[random.Next(schedulers.Length)], PersistenceTimeout = (uint)random.Next(0, 2) * 60 } };
                    break;
                case 6:   // a MAC changes
                    var address = IPAddress.Parse(pool4[random.Next(pool4.Length)]);
                    macs = new Dictionary<IPAddress, PhysicalAddress>(macs) { [address] = new PhysicalAddress([2, 0, 0, 0, (byte)step, (byte)random.Next(256)]) };
                    break;
            }

            var incremental = Build(changed, layout.Assignment, macs: macs, cache: cache);
            Assert.Equal(changed.Keys.ToHashSet(), cache.Services.Keys.ToHashSet());   // a removed service's entry goes with it
            var plain = Build(changed, Plain(layout), macs: macs);
            AssertSameAsPlain(incremental, plain);
            services = changed;
            layout = incremental;
        }
    }

    /// <summary>
    /// Services that each have servers of their own (the usual case: a server is an address and a port), changed as
    /// a running dataplane sees it — mostly one weight, sometimes two services at once, a config, a server to 0, and
    /// now and then what a patch must leave to the whole build (a server added or removed, a MAC that changed, a
    /// server shared with another service, a service gone). After every change the build equals the plain one, and
    /// the script from the last layout equals the script the whole build's layout gives, line for line; most of
    /// the builds were patches.
    /// </summary>
    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    [InlineData(13)]
    public void RandomSmallChanges_OnServicesWithServersOfTheirOwn_ArePatched_AndEqualTheWholeBuild(int seed)
    {
        var random = new Random(seed);
        ServiceState NewService(int n)
        {
            bool v6 = n % 5 == 4;
            bool nat = n % 7 == 6;
            var key = v6 ? Tcp($"2001:db8::{n + 16:x}", 80) : n % 3 == 2 ? Udp($"198.18.0.{n + 10}", 53) : Tcp($"198.18.0.{n + 10}", 80);
            var servers = Enumerable.Range(0, 2 + n % 3).Select(j =>
            {
                string address = v6 ? $"2001:db8:1::{n * 8 + j + 1:x}" : $"198.18.{2 + n / 30}.{n % 30 * 8 + j + 1}";
                return nat ? Masq(address, 8080, 1) : Route(address, key.Port, 1);
            }).ToArray();
            return Service(key, Config(n % 2 == 0 ? "mh" : "sh", SchedulerFlags.Flag2, onePacket: n % 6 == 5), servers);
        }
        ServiceState Weighted(ServiceState s, uint weight)
        {
            var server = s.Servers.Keys.OrderBy(k => k).ElementAt(random.Next(s.Servers.Count));
            return s with { Servers = new Dictionary<RealServerKey, RealServerConfig>(s.Servers) { [server] = s.Servers[server] with { Weight = weight } } };
        }
        var services = State([.. Enumerable.Range(0, 40).Select(NewService)]);
        var macs = MacsFor(services.Values);
        var cache = new BuildCache();
        var layout = Build(services, macs: macs, cache: cache);
        const int steps = 80;
        var shared = new HashSet<ServiceKey>();   // services given another's servers: a weight change of theirs is the whole build's

        for (int step = 0; step < steps; step++)
        {
            var changed = new Dictionary<ServiceKey, ServiceState>(services);
            var keys = changed.Keys.OrderBy(k => k.ToString(), StringComparer.Ordinal).ToList();
            var pick = changed[keys[random.Next(keys.Count)]];
            int kind = random.Next(20);
            switch (kind)
            {
                case < 10:   // one server's weight
                    changed[pick.Key] = Weighted(pick, (uint)random.Next(1, 5));
                    break;
                case < 12:   // two services' weights
                    changed[pick.Key] = Weighted(pick, (uint)random.Next(1, 5));
                    var other = changed[keys[random.Next(keys.Count)]];
                    changed[other.Key] = Weighted(other, (uint)random.Next(1, 5));
                    break;
                case 12:   // a server drained to 0
                    changed[pick.Key] = Weighted(pick, 0);
                    break;
                case 13:   // the scheduler (the hash variant stays: mh and sh both with their port flag)
                    changed[pick.Key] = pick with { Config = pick.Config with { Scheduler = pick.Config.Scheduler == "mh" ? "sh" : "mh" } };
                    break;
                case 14:   // the same content as a new object
                    changed[pick.Key] = pick with { Servers = new Dictionary<RealServerKey, RealServerConfig>(pick.Servers) };
                    break;
                case 15:   // a server added (the whole build)
                    var first = pick.Servers.First();
                    var added = new RealServerKey(IPAddress.Parse(first.Key.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"2001:db8:2::{step + 1:x}" : $"198.18.9.{step + 1}"), first.Key.Port);
                    changed[pick.Key] = pick with { Servers = new Dictionary<RealServerKey, RealServerConfig>(pick.Servers) { [added] = first.Value } };
                    macs = new Dictionary<IPAddress, PhysicalAddress>(macs) { [added.Address] = MacOf(added.Address) };
                    break;
                case 16:   // a server removed (the whole build)
                    if (pick.Servers.Count > 1) changed[pick.Key] = pick with { Servers = pick.Servers.Where(kv => !kv.Key.Equals(pick.Servers.Keys.Max())).ToDictionary() };
                    break;
                case 17:   // a MAC changed (the whole build)
                    var address = pick.Servers.Keys.First().Address;
                    macs = new Dictionary<IPAddress, PhysicalAddress>(macs) { [address] = new PhysicalAddress([2, 0, 0, 0, (byte)step, 7]) };
                    break;
                case 18:   // another service's servers (now shared: the whole build)
                    var donor = changed[keys[random.Next(keys.Count)]];
                    if (donor.Key.Family == pick.Key.Family && donor.Key.Port == pick.Key.Port && !donor.Key.Equals(pick.Key))
                    {
                        changed[pick.Key] = pick with { Servers = donor.Servers };
                        shared.UnionWith([pick.Key, donor.Key]);
                    }
                    break;
                default:   // a service gone (the whole build)
                    if (changed.Count > 10) changed.Remove(pick.Key);
                    break;
            }

            long patchesBefore = cache.Patches;
            var incremental = Build(changed, layout.Assignment, macs: macs, cache: cache);
            var whole = Build(changed, layout.Assignment, macs: macs, cache: new BuildCache());
            AssertSameAsPlain(incremental, Build(changed, Plain(layout), macs: macs));
            Assert.Equal(ScriptRenderer.Full(whole.Ruleset), ScriptRenderer.Full(incremental.Ruleset));
            Assert.Equal(ScriptRenderer.DiffScript(layout.Ruleset, whole.Ruleset, stage: true).ToString(), ScriptRenderer.DiffScript(layout.Ruleset, incremental.Ruleset, stage: true).ToString());
            Assert.Equal(whole.Pinned.Select(p => (p.Service, string.Join(",", p.Macs.Elements()))), incremental.Pinned.Select(p => (p.Service, string.Join(",", p.Macs.Elements()))));
            Assert.Equal(whole.DsrAddresses, incremental.DsrAddresses);
            if (kind < 12 && cache.Patches == patchesBefore && !changed.Keys.Where(k => !ReferenceEquals(changed[k], services.GetValueOrDefault(k))).Any(shared.Contains))
                Assert.Fail($"step {step}: a weight change of services with servers of their own was not patched");
            services = changed;
            layout = incremental;
        }
        Assert.True(cache.Patches >= steps / 3, $"{cache.Patches} of {steps} builds were patches");
    }

    /// <summary>
    /// Against the real kernel: a dataplane applies a series of change sets, each as the one
    /// incremental transaction it makes; a second namespace gets one full write of what the plain
    /// builds give for the same series. Both kernels then hold the same tables, element for element.
    /// </summary>
    [Fact]
    public async Task ChangeSetsAppliedOneAfterAnother_LeaveTheKernelAsAFullWriteOfThePlainBuild()
    {
        using var ns = TestNamespace.WithInterface();
        using var reference = TestNamespace.WithInterface();
        var web = Tcp("198.18.0.10", 80);
        var tls = Tcp("198.18.0.10", 443);
        var dns = Udp("198.18.0.11", 53);
        var v6 = Tcp("2001:db8::10", 80);
        var nat = Tcp("198.18.0.20", 80);
        var first = State(
            Service(web, Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80)),
            Service(tls, Route("198.18.1.11", 443), Route("198.18.1.12", 443), Route("198.18.1.13", 443)),
            Service(dns, Config("sh"), Route("198.18.1.11", 53, 2), Route("198.18.1.14", 53)),
            Service(v6, Config("mh", SchedulerFlags.Flag2), Route("2001:db8:1::11", 80), Route("2001:db8:1::12", 80)),
            Service(nat, Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 3)));
        var steps = new List<Dictionary<ServiceKey, ServiceState>> { first };
        Dictionary<ServiceKey, ServiceState> Next(Action<Dictionary<ServiceKey, ServiceState>> change)
        {
            var state = new Dictionary<ServiceKey, ServiceState>(steps[^1]);
            change(state);
            steps.Add(state);
            return state;
        }
        Next(s => s[web] = Service(web, Route("198.18.1.11", 80), Route("198.18.1.12", 80, 3), Route("198.18.1.13", 80)));   // one service's weight
        Next(s =>   // a server's weight in every service that has it
        {
            foreach (var service in s.Values.ToList())
                foreach (var (server, config) in service.Servers)
                    if (server.Address.Equals(IPAddress.Parse("198.18.1.11")))
                        s[service.Key] = service with { Servers = new Dictionary<RealServerKey, RealServerConfig>(service.Servers) { [server] = config with { Weight = 0 } } };
        });
        Next(s => s[tls] = Service(tls, Route("198.18.1.11", 443, 0), Route("198.18.1.12", 443), Route("198.18.1.13", 443), Route("198.18.1.15", 443)));   // a server added
        Next(s => s.Remove(dns));
        Next(s => s[Tcp("198.18.0.12", 80)] = Service(Tcp("198.18.0.12", 80), Config("mh"), Route("198.18.1.12", 80, 3), Route("198.18.1.14", 80)));
        Next(s => s[nat] = Service(nat, Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 1), Masq("198.18.2.13", 8080)));
        Next(s => s[v6] = Service(v6, Config("sh", persistence: 60), Route("2001:db8:1::11", 80), Route("2001:db8:1::12", 80, 2)));   // another hash variant
        Next(s => s[nat] = Service(nat, Config("sh", persistence: 60), Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 1), Masq("198.18.2.13", 8080)));   // a NAT chain on a map the kernel holds
        var all = steps.SelectMany(s => s.Values).ToList();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(all));

        Layout.Layout? plain = null;
        foreach (var state in steps)
        {
            await dataplane.ReconcileAsync(state);
            plain = LayoutBuilder.Build(new LayoutInput(state, MacsFor(all), OwnMac, plain is null ? Assignment.Empty : Plain(plain)), Options());
        }
        reference.NftScript(ScriptRenderer.Full(plain!.Ruleset));

        Assert.Equal(steps.Count, nft.Scripts.Count);   // one transaction per change set
        Assert.DoesNotContain(nft.Scripts, script => script.Contains("flush chain netdev merlin ingress", StringComparison.Ordinal));   // none of them a rewrite
        Assert.Equal(0, dataplane.Repairs);
        // The NAT service's new chain names its map: nft 1.0.6 takes that only with the map declared anew.
        Assert.Contains("delete map inet merlin_nat n", nft.Scripts[^1], StringComparison.Ordinal);
        foreach (var table in new[] { "netdev merlin", "inet merlin_nat" })
            Assert.Equal(Normalized(reference.Nft(["-j", "list", "table", .. table.Split(' ')])), Normalized(ns.Nft(["-j", "list", "table", .. table.Split(' ')])));
    }

    /// <summary>
    /// A JSON listing without handles and without the orders that depend on history: objects sorted,
    /// elements sorted; rules keep their order within their chain.
    /// </summary>
    private static string Normalized(string json)
    {
        var items = JsonNode.Parse(json)!["nftables"]!.AsArray();
        var objects = new List<string>();
        var rules = new SortedDictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var item in items)
        {
            var (kind, body) = item!.AsObject().Single();
            if (kind == "metainfo") continue;
            var o = body!.AsObject();
            o.Remove("handle");
            if (o["elem"] is JsonArray elements)
            {
                var sorted = elements.Select(e => e!.ToJsonString()).Order(StringComparer.Ordinal).ToList();
                o["elem"] = new JsonArray([.. sorted.Select(e => JsonNode.Parse(e))]);
            }
            if (kind == "rule")
            {
                var chain = o["chain"]!.GetValue<string>();
                if (!rules.TryGetValue(chain, out var list)) rules[chain] = list = [];
                list.Add(o.ToJsonString());
            }
            else
            {
                objects.Add($"{kind} {o.ToJsonString()}");
            }
        }
        objects.Sort(StringComparer.Ordinal);
        return string.Join("\n", objects.Concat(rules.SelectMany(r => r.Value)));
    }
}
