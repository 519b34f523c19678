using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;
using Merlin.Reconciler;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>Against the real kernel, in a namespace each test makes and deletes.</summary>
public class KernelTests
{
    private static Dictionary<ServiceKey, ServiceState> Mixed() => State(
        Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80), Route("198.18.1.13", 80, 0)),
        Service(Tcp("198.18.0.10", 443), Route("198.18.1.11", 443), Route("198.18.1.12", 443), Route("198.18.1.13", 443, 0)),
        Service(Udp("198.18.0.11", 53), Config("sh"), Route("198.18.1.11", 53, 2), Route("198.18.1.14", 53)),
        Service(Udp("2001:db8::10", 4500), Config("wrr", onePacket: true), Route("2001:db8:1::11", 4500)),
        Service(Tcp("2001:db8::10", 80), Config("mh", SchedulerFlags.Flag2), Route("2001:db8:1::11", 80), Route("2001:db8:1::12", 80)),
        Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 3)),
        Service(Tcp("2001:db8::20", 443), Config("sh", persistence: 60), Masq("2001:db8:2::11", 8443)));

    [Fact]
    public async Task Apply_ThenRead_GivesBackTheSameState()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));

        Assert.Equal(21, await dataplane.ReconcileAsync(desired));   // 7 services, 14 servers

        Assert.Single(nft.Scripts);   // the whole plan, one transaction
        Assert.Equal(["netdev merlin d1", "netdev merlin d2", "netdev merlin d3", "netdev merlin d4"], nft.Staged.Order(StringComparer.Ordinal));   // its DSR maps made ahead of it
        var read = await dataplane.ReadAsync(CancellationToken.None);
        Assert.True(read.SameAs(new DataplaneState(desired)));
        Assert.Empty(dataplane.Issues);
        var layout = Build(desired);
        Assert.Null(TableAuditor.Mismatch(ns.Tables(("netdev", "merlin"), ("inet", "merlin_nat")), layout.Ruleset));
        // The kernel holds exactly the Maglev table we computed.
        var d1 = Kernel.NftJson.Elements(ns.Nft("-j", "list", "map", "netdev", "merlin", "d1"));
        Assert.Equal(layout.Ruleset.Table("netdev", "merlin")!.Sets["d1"].Content.Elements().Select(e => e.Element).Order(StringComparer.Ordinal),
            d1.Select(e => e.Element).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task SecondPass_OfTheSameState_ChangesNothingInTheKernel()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        var generation = ns.Generation();
        var transactions = dataplane.Transactions;

        Assert.Equal(0, await dataplane.ReconcileAsync(desired));
        Assert.Equal(0, await dataplane.ReconcileAsync(desired));

        Assert.Equal(generation, ns.Generation());
        Assert.Equal(transactions, dataplane.Transactions);
        Assert.Equal(0, dataplane.Repairs);
        // Nothing was listed either: we wrote those sets ourselves and nobody committed since.
        Assert.Empty(nft.Listed);
    }

    [Fact]
    public async Task AfterSomeoneElsesTransaction_OurSetsAreAuditedOnce_ThenLeftAlone()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);

        ns.Nft("add", "table", "inet", "someone_else");
        await dataplane.ReadAsync(CancellationToken.None);
        var audited = nft.Listed.Count;
        await dataplane.ReadAsync(CancellationToken.None);

        Assert.Equal(Build(desired).Ruleset.Tables.Sum(t => t.Sets.Values.Count(s => !s.Dynamic && s.Name != "marker")), audited);
        Assert.Equal(audited, nft.Listed.Count);
        Assert.Equal(0, dataplane.Repairs);
    }

    public static TheoryData<string, string> Tampering => new()
    {
        { "rule deleted", "flush chain netdev merlin d1_4p" },
        { "foreign rule in our chain", "add rule netdev merlin ingress ip daddr 198.18.0.10 drop" },
        { "dispatch entry added", "add element netdev merlin svc4 { 198.18.0.99 . tcp . 80 : goto d1_4p }" },
        { "dispatch entry deleted", "delete element netdev merlin svc4 { 198.18.0.10 . tcp . 443 }" },
        { "maglev slot rewritten", "delete element netdev merlin d1 { 7 }\nadd element netdev merlin d1 { 7 : 02:00:00:00:00:66 }" },
        { "maglev slot deleted", "delete element netdev merlin d1 { 100 }" },
        { "state record deleted", "delete element netdev merlin state { 256 }" },
        { "chain added", "add chain netdev merlin extra" },
        { "set added", "add set netdev merlin extra { type ipv4_addr; }" },
        { "marker replaced", "delete set netdev merlin marker\nadd set netdev merlin marker { type mark; comment \"merlin v2 0\"; }" },
        { "nat table deleted", "delete table inet merlin_nat" },
        { "dsr table deleted", "delete table netdev merlin" },
        { "nat dnat rule replaced", "flush chain inet merlin_nat n1_p\nadd rule inet merlin_nat n1_p meta l4proto tcp dnat ip to 198.18.2.99 comment \"merlin: new connection\"" },
        { "whole ruleset flushed", "flush ruleset" },
    };

    [Theory]
    [MemberData(nameof(Tampering))]
    public async Task ChangeBehindOurBack_IsRepairedAtTheNextResync(string what, string script)
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        await dataplane.ReadAsync(CancellationToken.None);
        var layout = Build(desired);

        ns.NftScript(script + "\n");
        var read = await dataplane.ReadAsync(CancellationToken.None);

        Assert.True(dataplane.Repairs > 0, $"{what}: not detected");
        Assert.True(read.SameAs(new DataplaneState(desired)));
        Assert.Null(TableAuditor.Mismatch(ns.Tables(("netdev", "merlin"), ("inet", "merlin_nat")), layout.Ruleset));
        foreach (var (table, set) in new[] { ("netdev merlin", "d1"), ("netdev merlin", "svc4"), ("netdev merlin", "state"), ("inet merlin_nat", "n1") })
        {
            var t = table.Split(' ');
            var want = layout.Ruleset.Table(t[0], t[1])!.Sets[set];
            var have = Kernel.NftJson.Elements(ns.Nft("-j", "list", want.Kind, t[0], t[1], set));
            Assert.Equal(want.Content.Elements().Select(e => e.Element).Order(StringComparer.Ordinal), have.Select(e => e.Element).Order(StringComparer.Ordinal));
        }
        if (what == "nat dnat rule replaced") Assert.DoesNotContain("198.18.2.99", ns.Nft("list", "chain", "inet", "merlin_nat", "n1_p"));
        // Repaired for good: the next resync finds nothing to do.
        var repairs = dataplane.Repairs;
        var transactions = dataplane.Transactions;
        await dataplane.ReadAsync(CancellationToken.None);
        await dataplane.ReadAsync(CancellationToken.None);
        Assert.Equal(repairs, dataplane.Repairs);
        Assert.Equal(transactions, dataplane.Transactions);
    }

    [Fact]
    public async Task PinnedFlows_SurviveARepair()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        ns.Nft("add", "element", "netdev", "merlin", "flows4", "{ 198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b }");

        ns.Nft("flush", "chain", "netdev", "merlin", "ingress");
        await dataplane.ReadAsync(CancellationToken.None);

        Assert.Equal(1, dataplane.Repairs);
        Assert.Contains("198.18.9.1 . 198.18.0.10 . 40000 . 80", ns.Nft("list", "map", "netdev", "merlin", "flows4"));
    }

    [Fact]
    public async Task Restart_AdoptsTheTablesWithoutWritingAnything()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (first, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await first.ReconcileAsync(desired);
        var generation = ns.Generation();

        var (second, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        Assert.Equal(0, await second.ReconcileAsync(desired));
        Assert.Equal(0, await second.ReconcileAsync(desired));

        Assert.Empty(nft.Scripts);
        Assert.Equal(generation, ns.Generation());
        Assert.Equal(0, second.Repairs);
    }

    /// <summary>
    /// Tables an older Merlin wrote (a "merlin v1" marker: one SHA-256 over everything) are this version's tables
    /// but for the marker's fingerprint: adopted, the marker set alone declared anew, no repair counted, pinned flows kept.
    /// </summary>
    [Fact]
    public async Task Restart_AfterAnUpgrade_ReplacesAnOlderMarker_WithoutCountingARepair()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (first, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await first.ReconcileAsync(desired);
        ns.NftScript("delete set netdev merlin marker\nadd set netdev merlin marker { type mark; comment \"merlin v1 0123456789abcdef0123456789abcdef\"; }\n");
        ns.Nft("add", "element", "netdev", "merlin", "flows4", "{ 198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b }");

        var (second, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        Assert.Equal(0, await second.ReconcileAsync(desired));

        Assert.Equal(0, second.Repairs);
        // One transaction, of the marker alone.
        var script = Assert.Single(nft.Scripts);
        Assert.All(script.TrimEnd('\n').Split('\n'), line => Assert.EndsWith("netdev merlin marker", line.Split(" {")[0], StringComparison.Ordinal));
        Assert.Contains($"{LayoutBuilder.MarkerVersion} {Build(desired).Ruleset.Fingerprint("marker")}", ns.Nft("list", "set", "netdev", "merlin", "marker"));
        Assert.Contains("198.18.9.1", ns.Nft("list", "map", "netdev", "merlin", "flows4"));
        // Someone else's marker is still tampering.
        ns.NftScript("delete set netdev merlin marker\nadd set netdev merlin marker { type mark; comment \"not ours\"; }\n");
        var (third, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await third.ReconcileAsync(desired);
        Assert.Equal(1, third.Repairs);
    }

    [Fact]
    public async Task Restart_WithAnotherSeed_RewritesEveryRuleWithTheNewSeed()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (first, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await first.ReconcileAsync(desired);
        ns.Nft("add", "element", "netdev", "merlin", "flows4", "{ 198.18.9.1 . 198.18.0.10 . 40000 . 80 : 02:00:c6:12:01:0b }");

        var (second, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values), Options() with { HashSeed = 0x0badcafe });
        Assert.Equal(0, await second.ReconcileAsync(desired));

        Assert.Equal(1, second.Repairs);
        var chain = ns.Nft("list", "chain", "netdev", "merlin", "d1_4p");
        Assert.Contains("seed 0xbadcafe", chain);
        Assert.DoesNotContain("seed 0x5eed1234", chain);
        Assert.Contains("198.18.9.1", ns.Nft("list", "map", "netdev", "merlin", "flows4"));
    }

    [Fact]
    public async Task WeightChange_IsOneTransactionOfChangedElementsOnly()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        nft.Scripts.Clear();

        var changed = new Dictionary<ServiceKey, ServiceState>(desired);
        foreach (var port in new ushort[] { 80, 443 })
        {
            var key = Tcp("198.18.0.10", port);
            changed[key] = Service(key, Route("198.18.1.11", port), Route("198.18.1.12", port, 3), Route("198.18.1.13", port, 0));
        }
        Assert.Equal(2, await dataplane.ReconcileAsync(changed));

        var script = Assert.Single(nft.Scripts).TrimEnd('\n').Split('\n');
        Assert.All(script, line => Assert.Matches(@"^(delete|add) (element netdev merlin (d1|state) |set netdev merlin marker)", line));
        Assert.True((await dataplane.ReadAsync(CancellationToken.None)).SameAs(new DataplaneState(changed)));
    }

    [Fact]
    public async Task OneOperationAtATime_ReachesTheSameTables()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Mixed();
        var (dataplane, nft) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));

        var plan = Planner.Plan(new DataplaneState(desired), await dataplane.ReadAsync(CancellationToken.None));
        foreach (var op in plan) await ((IDataplane)dataplane).ApplyAsync(op, CancellationToken.None);

        Assert.Equal(plan.Count, nft.Scripts.Count);   // a transaction per operation
        Assert.True((await dataplane.ReadAsync(CancellationToken.None)).SameAs(new DataplaneState(desired)));
        Assert.Null(TableAuditor.Mismatch(ns.Tables(("netdev", "merlin"), ("inet", "merlin_nat")), dataplane.Ruleset!));
        // Group names depend on the order things happened in; the tables themselves do not.
        static List<string> Maps(NftRuleset r) => r.Tables.SelectMany(t => t.Sets.Values.Where(s => s.Name[0] is 'd' or 'n' && char.IsAsciiDigit(s.Name[1])).Select(s => s.Content.Hash)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(Maps(Build(desired).Ruleset), Maps(dataplane.Ruleset!));
        var refused = await Assert.ThrowsAsync<DataplaneException>(() => dataplane.ApplyAsync(new AddService(Tcp("198.18.0.10", 80), Config()), CancellationToken.None));
        Assert.Contains("service exists", refused.Message);
    }

    [Fact]
    public async Task RemovingEverything_DeletesOurTables_AndNothingElse()
    {
        using var ns = TestNamespace.WithInterface();
        ns.Nft("add", "table", "inet", "someone_else");
        var desired = Mixed();
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);

        await dataplane.ReconcileAsync(State());

        Assert.Equal("table inet someone_else\n", ns.Nft("list", "tables"));
        Assert.Empty((await dataplane.ReadAsync(CancellationToken.None)).Services);
    }

    [Fact]
    public async Task ABatchTheKernelRefuses_IsAppliedOperationByOperation_AndOnlyTheBadOnesFail()
    {
        using var ns = TestNamespace.WithInterface();
        // An interface that does not exist: every DSR rule is refused ("fwd to"), NAT is fine.
        var options = Options() with { Interface = "nosuch0" };
        var desired = State(Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80)), Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 8080)));
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values), options);

        var plan = Planner.Plan(new DataplaneState(desired), await dataplane.ReadAsync(CancellationToken.None));
        var errors = await dataplane.ApplyAsync(plan, CancellationToken.None);

        var failed = plan.Where((_, i) => errors[i] is not null).ToList();
        Assert.Equal([new AddServer(Tcp("198.18.0.10", 80), new RealServerKey(IPAddress.Parse("198.18.1.11"), 80), new RealServerConfig { Weight = 1, Forward = ForwardMethod.Route })], failed);
        Assert.Contains("nosuch0", errors.First(e => e is not null)!.Message);
        var read = await dataplane.ReadAsync(CancellationToken.None);
        Assert.Equal(2, read.Services.Count);
        Assert.Single(read.Services[Tcp("198.18.0.20", 80)].Servers);
        Assert.Empty(read.Services[Tcp("198.18.0.10", 80)].Servers);
    }
}
