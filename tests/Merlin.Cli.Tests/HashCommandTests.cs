using System.Text.Json;

namespace Merlin.Cli.Tests;

public class HashCommandTests
{
    [Fact]
    public async Task HashSimulate_PrintsSharesAndDisruptionForEveryAlgorithm_WithoutCallingTheDaemon()
    {
        var m = await Meradm.RunAsync("hash", "simulate", "--servers", "3", "--flows", "20000");

        Assert.Equal(0, m.ExitCode);
        Assert.Empty(m.Client.Calls);
        Assert.Contains("3 servers, 20000 flows", m.Out);
        foreach (var name in new[] { "maglev", "sh-4.x", "sh-fixed", "mh", "md" }) Assert.Contains(name, m.Out);
        Assert.Contains("add 198.18.0.13:80", m.Out);
        Assert.Contains("drain ", m.Out);
    }

    [Fact]
    public async Task HashSimulate_Json_IsParseableWithOneReportPerAlgorithm()
    {
        var m = await Meradm.RunAsync("hash", "simulate", "--servers", "4", "--weights", "1,1,2,2", "--flows", "10000", "-a", "maglev,mh", "--output", "json");

        Assert.Equal(0, m.ExitCode);
        using var doc = JsonDocument.Parse(m.Out);
        var algorithms = doc.RootElement.GetProperty("algorithms");
        Assert.Equal(["maglev", "mh"], algorithms.EnumerateArray().Select(a => a.GetProperty("name").GetString()));
        var maglev = algorithms[0];
        var shares = maglev.GetProperty("servers").EnumerateArray().Select(s => s.GetProperty("share").GetDouble()).ToArray();
        Assert.Equal(1.0, shares.Sum(), 3);
        Assert.True(shares[2] > shares[0] * 1.6, "weight 2 should take about twice the flows of weight 1");
    }

    [Fact]
    public async Task HashSimulate_FlowsFile_UsesTheGivenFlows()
    {
        var file = Path.GetTempFileName();
        try
        {
            await File.WriteAllLinesAsync(file, ["# captured clients", "198.18.5.1:40000", "[2001:db8::7]:40001", "198.18.5.2:40002"], TestContext.Current.CancellationToken);
            var m = await Meradm.RunAsync("hash", "simulate", "--servers", "2", "--flows-file", file);
            Assert.Equal(0, m.ExitCode);
            Assert.Contains("2 servers, 3 flows", m.Out);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public async Task HashSimulate_FewerWeightsThanServers_AreCycled()
    {
        var m = await Meradm.RunAsync("hash", "simulate", "--servers", "5", "--weights", "1,2", "--flows", "1000", "-a", "md", "--output", "json");

        Assert.Equal(0, m.ExitCode);
        using var doc = JsonDocument.Parse(m.Out);
        var weights = doc.RootElement.GetProperty("algorithms")[0].GetProperty("servers").EnumerateArray().Select(s => s.GetProperty("weight").GetUInt32());
        Assert.Equal([1u, 2u, 1u, 2u, 1u], weights);
    }

    [Fact]
    public async Task HashSimulate_Changes_PrintsMovedOverIdealPerKindOfChange()
    {
        var m = await Meradm.RunAsync("hash", "simulate", "-n", "20", "-w", "1,2", "-f", "20000", "--changes", "200", "--seed", "5");

        Assert.Equal(0, m.ExitCode);
        Assert.Contains("200 random changes from 20 servers (seed 5; weights 1,2)", m.Out);
        foreach (var kind in new[] { "add", "remove", "drain", "undrain", "reweight", "all" }) Assert.Contains("\n" + kind + " ", m.Out);
        Assert.Contains("md slots", m.Out);
        Assert.Contains("after the last change, max / fair share: maglev slots", m.Out);
    }

    [Theory]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "--changes", "10", "-a", "mh" }, "\"mh\" cannot run a change sequence")]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "--changes", "0" }, "--changes")]
    [InlineData(new[] { "hash", "simulate" }, "--servers is required")]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "-a", "rr" }, "\"rr\" is not one of maglev")]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "--weights", "1,x" }, "--weights: \"x\" is not a weight")]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "--hash-seed", "zz" }, "is not a 32-bit hex number")]
    [InlineData(new[] { "hash", "simulate", "--servers", "3", "--pattern", "sorted" }, "--pattern: \"sorted\"")]
    public async Task HashSimulate_BadArguments_AreUsageErrors(string[] args, string expected)
    {
        var m = await Meradm.RunAsync(args);
        m.AssertUsageError(expected);
    }
}
