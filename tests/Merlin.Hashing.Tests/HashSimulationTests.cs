using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

public class HashSimulationTests
{
    [Fact]
    public void ReportsEveryAlgorithm_WithSharesThatAddUp()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(5), SyntheticFlows.Generate(20_000, 9));
        Assert.Equal(["maglev", "sh-4.x", "sh-fixed", "mh", "md"], report.Algorithms.Select(a => a.Name));
        foreach (var a in report.Algorithms)
        {
            Assert.Equal(5, a.Servers.Count);
            Assert.Equal(20_000, a.Servers.Sum(s => s.Flows));
            Assert.Equal(1.0, a.Servers.Sum(s => s.Share), 6);
            Assert.All(a.Servers, s => Assert.Equal(0.2, s.ExpectedShare, 6));
            Assert.Equal(a.TableSize, a.Servers.Sum(s => s.Slots));
            Assert.Equal(["add", "remove", "drain"], a.Disruptions.Select(d => d.Change));
        }
        Assert.Equal(509, report.Algorithms[0].TableSize);
        Assert.Equal(256, report.Algorithms[1].TableSize);
        Assert.Equal(4093, report.Algorithms[3].TableSize);
    }

    [Fact]
    public void IsDeterministic()
    {
        var servers = SimulationServer.Synthetic(4, [1, 2, 3, 4]);
        var a = HashSimulation.Run(servers, SyntheticFlows.Generate(5000, 5));
        var b = HashSimulation.Run(servers, SyntheticFlows.Generate(5000, 5));
        Assert.Equal(SimulationFormatter.Format(a), SimulationFormatter.Format(b));
    }

    [Fact]
    public void Disruption_SeparatesNecessaryFromNeedlessMoves()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(6), SyntheticFlows.Generate(30_000, 3));
        var maglev = report.Algorithms.Single(a => a.Algorithm == HashAlgorithm.Maglev);
        var sh = report.Algorithms.Single(a => a.Algorithm == HashAlgorithm.ShHash32);
        var remove = maglev.Disruptions.Single(d => d.Change == "remove");
        Assert.InRange(remove.Ideal, 0.15, 0.18);
        Assert.True(remove.Needless < 0.02, $"maglev needless {remove.Needless:P2}");
        // sh re-tiles its whole table when a server leaves: most flows move.
        Assert.True(sh.Disruptions.Single(d => d.Change == "remove").Needless > 0.3);
        // A drained sh server (weight 1 → 0) keeps its one bucket, so only its own flows move.
        var shDrain = sh.Disruptions.Single(d => d.Change == "drain");
        Assert.True(shDrain.Needless < 0.001);
    }

    [Fact]
    public void DrainWithoutFallback_LeavesTheDrainedServersFlowsWithNoServer()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(4), SyntheticFlows.Generate(10_000, 4),
            new SimulationOptions { Fallback = false });
        foreach (var name in new[] { "sh-4.x", "sh-fixed", "mh" })
        {
            // Weight 1 → 0 keeps the server's slots (one sh bucket each way; mh builds from last_weight),
            // so exactly the flows it had are left without a server.
            var algorithm = report.Algorithms.Single(a => a.Name == name);
            var drain = algorithm.Disruptions.Single(d => d.Change == "drain");
            Assert.Equal(algorithm.Servers[2].Share, drain.Unrouted, 6);
            Assert.Equal(drain.Unrouted, drain.Moved, 6);
        }
        var maglevDrain = report.Algorithms.Single(a => a.Name == "maglev").Disruptions.Single(d => d.Change == "drain");
        Assert.Equal(0, maglevDrain.Unrouted);
    }

    [Fact]
    public void ChangedServerAndAddedWeight_CanBeChosen()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(3), SyntheticFlows.Generate(1000, 1),
            new SimulationOptions { ChangedServer = 0, AddedWeight = 3, Algorithms = [HashAlgorithm.Maglev] });
        var d = report.Algorithms[0].Disruptions;
        Assert.Equal("198.18.0.10:80", d[1].ServerId);
        Assert.Equal("198.18.0.13:80", d[0].ServerId);
        Assert.Equal(3u, d[0].Weight);
        Assert.Equal(0.5, d[0].Ideal, 6);
    }

    [Fact]
    public void SuppliedFlowsAndServers_AreValidated()
    {
        Assert.Throws<ArgumentException>(() => HashSimulation.Run([], []));
        // One server: removing or draining it leaves every flow without one.
        var alone = HashSimulation.Run([new("10.0.0.1:80", 1)], SyntheticFlows.Generate(100, 1));
        Assert.All(alone.Algorithms, a => Assert.Equal(1.0, a.Disruptions.Single(d => d.Change == "remove").Unrouted));
        Assert.Throws<ArgumentException>(() => HashSimulation.Run([new("a:1", 1), new("a:1", 1)], []));
        var ex = Assert.Throws<ArgumentException>(() => HashSimulation.Run([new("web", 1)], [FlowKey.Parse("10.0.0.1:1")],
            new SimulationOptions { Algorithms = [HashAlgorithm.Mh] }));
        Assert.Contains("address and port", ex.Message);
        // Maglev alone takes any identity.
        Assert.Single(HashSimulation.Run([new("web", 1)], [FlowKey.Parse("10.0.0.1:1")],
            new SimulationOptions { Algorithms = [HashAlgorithm.Maglev] }).Algorithms);
    }

    [Fact]
    public void SyntheticServersAndFlows_AreStable()
    {
        Assert.Equal("198.18.0.10:80", SimulationServer.SyntheticId(0));
        Assert.Equal("198.18.1.9:80", SimulationServer.SyntheticId(255));
        Assert.Equal(SyntheticFlows.Generate(10, 77), SyntheticFlows.Generate(10, 77));
        Assert.NotEqual(SyntheticFlows.Generate(10, 77), SyntheticFlows.Generate(10, 78));
        Assert.All(SyntheticFlows.Generate(1000, 1), f => Assert.InRange(f.Port, 1024, 65535));
        Assert.Equal(16, SyntheticFlows.Generate(1000, 1, FlowPattern.FewClients).Select(f => f.Address).Distinct().Count());
        Assert.Equal("47.85.0.245:63251", SyntheticFlows.Generate(1, 2024)[0].ToString());
    }

    [Fact]
    public void Formatter_ShowsAlgorithmsSideBySide()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(3, [1, 1, 2]), SyntheticFlows.Generate(10_000, 1));
        var text = SimulationFormatter.Format(report);
        Assert.Contains("maglev", text);
        Assert.Contains("sh-4.x", text);
        Assert.Contains("sh-fixed", text);
        Assert.Contains("198.18.0.12:80", text);
        Assert.Contains("add 198.18.0.13:80 w1", text);
        Assert.Contains("max / expected", text);
        Assert.Contains("50.00%", text);   // expected share of the weight-2 server
        Assert.Contains("remove: moved / fair", text);
    }

    [Theory]
    [InlineData("maglev", HashAlgorithm.Maglev)]
    [InlineData("SH-4.x", HashAlgorithm.ShLinux4x)]
    [InlineData("sh-fixed", HashAlgorithm.ShHash32)]
    [InlineData(" mh ", HashAlgorithm.Mh)]
    public void AlgorithmNames_Parse(string name, HashAlgorithm expected)
    {
        Assert.True(HashAlgorithms.TryParse(name, out var a));
        Assert.Equal(expected, a);
        Assert.False(HashAlgorithms.TryParse("rr", out _));
    }
}

public class MinimalDisruptionSimulationTests
{
    [Fact]
    public void RemoveAndDrain_MoveNoFlowNeedlessly_AndAddMovesAboutItsShare()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(50, Enumerable.Range(0, 50).Select(i => (uint)(1 + i % 3)).ToArray()), SyntheticFlows.Generate(100_000, 5),
            new SimulationOptions { Algorithms = [HashAlgorithm.MinimalDisruption, HashAlgorithm.Maglev] });
        var md = report.Algorithms[0];
        Assert.Equal("md", md.Name);
        Assert.Equal(0, md.Disruptions.Single(d => d.Change == "remove").Needless);
        Assert.Equal(0, md.Disruptions.Single(d => d.Change == "drain").Needless);
        var add = md.Disruptions.Single(d => d.Change == "add");
        Assert.InRange(add.Moved / add.Ideal, 0.85, 1.15);   // flows sample the slots: a few percent of noise
        Assert.InRange(md.MaxOverExpected, 1.0, 1.1);
        var maglev = report.Algorithms[1];
        Assert.True(maglev.Disruptions.Single(d => d.Change == "remove").Needless > 0);
    }

    [Fact]
    public void ChangeSequence_MdMovesAboutTheIdeal_MaglevMore()
    {
        var report = ChangeSimulation.Run(40, [1, 2], SyntheticFlows.Generate(50_000, 2), 300, 11);
        Assert.Equal(300, report.Changes);
        var maglev = report.Algorithms.Single(a => a.Name == "maglev");
        var md = report.Algorithms.Single(a => a.Name == "md");
        var mdAll = md.Kinds.Single(k => k.Kind == "all");
        Assert.Equal(300, mdAll.Count);
        Assert.InRange(mdAll.SlotsMovedOverIdeal, 0.95, 1.05);
        Assert.True(mdAll.WorstSlotsMovedOverIdeal <= 1.05, $"worst {mdAll.WorstSlotsMovedOverIdeal}");
        Assert.True(maglev.Kinds.Single(k => k.Kind == "all").SlotsMovedOverIdeal > 1.2);
        Assert.True(md.MaxSlotsOverFair < 1.05);
        var text = ChangeSimulation.Format(report);
        Assert.Contains("300 random changes from 40 servers (seed 11; weights 1,2)", text);
        Assert.Contains("md slots", text);
    }

    [Fact]
    public void ChangeSequence_IsDeterministic()
    {
        var flows = SyntheticFlows.Generate(10_000, 4);
        Assert.Equal(ChangeSimulation.Format(ChangeSimulation.Run(10, [1], flows, 100, 3)), ChangeSimulation.Format(ChangeSimulation.Run(10, [1], flows, 100, 3)));
    }
}
