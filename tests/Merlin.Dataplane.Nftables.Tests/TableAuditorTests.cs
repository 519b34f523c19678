using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Microsoft.Extensions.Time.Testing;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>What the auditor finds changed behind our back reaches <c>meradm status</c> (the dataplane's warnings), and is repaired.</summary>
public class TableAuditorTests
{
    private static Dictionary<ServiceKey, ServiceState> Desired() => State(
        Service(Tcp("198.18.0.10", 80), Route("198.18.1.11", 80), Route("198.18.1.12", 80)),
        Service(Tcp("198.18.0.20", 80), Masq("198.18.2.11", 8080), Masq("198.18.2.12", 8080, 3)));

    private static IReadOnlyList<string> Elements(TestNamespace ns, string kind, string table, string set) =>
        Kernel.NftJson.Elements(ns.Nft("-j", "list", kind, "netdev", table, set)).Select(e => e.Element).Order(StringComparer.Ordinal).ToList();

    [Fact]
    public async Task ADeletedMapElement_IsReportedAsAWarning_AndRestored()
    {
        using var ns = TestNamespace.WithInterface();
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 12, 7, 3, 0, 0, TimeSpan.Zero));
        var desired = Desired();
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values), time: time);
        await dataplane.ReconcileAsync(desired);
        await dataplane.ReadAsync(CancellationToken.None);
        Assert.Empty(dataplane.Warnings);
        var written = Elements(ns, "map", "merlin", "d1");

        ns.Nft("delete", "element", "netdev", "merlin", "d1", "{ 100 }");
        await dataplane.ReadAsync(CancellationToken.None);

        var warning = Assert.Single(dataplane.Warnings);
        Assert.Equal("repaired at 2026-12-07 03:00:00Z: netdev merlin d1 was changed: 0 wrong elements, 1 missing", warning);
        Assert.Equal(written, Elements(ns, "map", "merlin", "d1"));
        Assert.Equal(1, dataplane.Repairs);

        // The report stays for an operator's next look, then goes; the issues of the layout stay as they were.
        time.Advance(NftablesDataplane.RepairsShownFor + TimeSpan.FromSeconds(1));
        Assert.Empty(dataplane.Warnings);
    }

    [Fact]
    public async Task ADeletedChain_IsReportedAsAWarning_AndTheTablesRewritten()
    {
        using var ns = TestNamespace.WithInterface();
        var desired = Desired();
        var (dataplane, _) = KernelDataplane.Create(ns, FakeNeighbours.For(desired.Values));
        await dataplane.ReconcileAsync(desired);
        await dataplane.ReadAsync(CancellationToken.None);

        ns.Nft("flush", "chain", "netdev", "merlin", "ingress");
        await dataplane.ReadAsync(CancellationToken.None);

        var warning = Assert.Single(dataplane.Warnings);
        Assert.Contains("chain netdev merlin ingress holds 0 rules, not the 4 we wrote", warning);
        Assert.Null(TableAuditor.Mismatch(ns.Tables(("netdev", "merlin"), ("inet", "merlin_nat")), Build(desired).Ruleset));
    }
}
