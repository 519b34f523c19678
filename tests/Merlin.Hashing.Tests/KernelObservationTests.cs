using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

/// <summary>
/// The models against the real thing: Reference/ipvs-6.1-observed.txt holds the destination the
/// kernel's own sh and mh schedulers gave each of 120 connections per scenario (Debian 6.1 under
/// qemu; see Reference/ipvs-capture). 6.1's sh uses hash_32, so the 4.x variant must NOT match.
/// </summary>
public class KernelObservationTests
{
    private sealed record Scenario(string Name, string Scheduler, string[] Flags, IpvsDest[] Dests, List<(FlowKey Flow, string? Dest)> Observed);

    private static readonly Lazy<List<Scenario>> Scenarios = new(Load);

    private static List<Scenario> Load()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Reference", "ipvs-6.1-observed.txt");
        var scenarios = new List<Scenario>();
        foreach (var line in File.ReadLines(path))
        {
            if (line.StartsWith('#') || line.Length == 0) continue;
            var f = line.Split(' ');
            if (f[0] == "scenario")
            {
                var dests = f[4].Split(',').Select(sw => IpvsDest.Create($"198.18.0.{sw.Split(':')[0]}:80", int.Parse(sw.Split(':')[1]))).ToArray();
                if (f[5] != "-")
                    for (int i = 0; i < dests.Length; i++)
                        if (dests[i].Id == $"198.18.0.{f[5]}:80") dests[i] = dests[i].WithWeight(0);   // ipvsadm -e -w 0
                scenarios.Add(new Scenario(f[1], f[2], f[3] == "-" ? [] : f[3].Split(','), dests, []));
            }
            else scenarios[^1].Observed.Add((FlowKey.Parse(f[0]), f[1] == "-" ? null : f[1]));
        }
        return scenarios;
    }

    public static TheoryData<string> Names() => new(Scenarios.Value.Select(s => s.Name));

    [Theory]
    [MemberData(nameof(Names))]
    public void Model_ChoosesWhatTheKernelChose(string name)
    {
        var s = Scenarios.Value.Single(x => x.Name == name);
        Assert.Equal(120, s.Observed.Count);
        bool port = s.Flags.Contains($"{s.Scheduler}-port");
        bool fallback = s.Flags.Contains($"{s.Scheduler}-fallback");
        Func<FlowKey, int> schedule = s.Scheduler == "mh"
            ? KernelMh.Build(s.Dests).Schedule(port, fallback)
            : KernelSh.Build(s.Dests, ShVariant.Hash32).Schedule(port, fallback);
        foreach (var (flow, dest) in s.Observed)
        {
            int d = schedule(flow);
            Assert.True(dest == (d < 0 ? null : s.Dests[d].Id), $"{flow}: kernel {dest ?? "none"}, model {(d < 0 ? "none" : s.Dests[d].Id)}");
        }
    }

    [Fact]
    public void Linux4xHash_IsNotWhat61Runs()
    {
        foreach (var s in Scenarios.Value.Where(x => x.Scheduler == "sh"))
        {
            bool port = s.Flags.Contains("sh-port");
            bool fallback = s.Flags.Contains("sh-fallback");
            var old = KernelSh.Build(s.Dests, ShVariant.Linux4x);
            int agree = s.Observed.Count(o => o.Dest == (old.Schedule(o.Flow, port, fallback) is var d and >= 0 ? s.Dests[d].Id : null));
            Assert.True(agree < s.Observed.Count * 2 / 3, $"{s.Name}: the 4.x hash agreed on {agree} of {s.Observed.Count}");
        }
    }

    [Fact]
    public void CoversTheCasesThatMatter()
    {
        var names = Scenarios.Value.Select(s => s.Name).ToArray();
        Assert.Contains("mh_port5", names);        // five servers added out of order
        Assert.Contains("mh_w", names);            // weights
        Assert.Contains("mh_drain_nofb", names);   // drained, no fallback: the kernel drops
        Assert.Contains("sh_drain", names);
        Assert.Contains(Scenarios.Value.Single(s => s.Name == "mh_drain_nofb").Observed, o => o.Dest is null);
    }
}

internal static class ScheduleExtensions
{
    public static Func<FlowKey, int> Schedule(this KernelMh mh, bool port, bool fallback) => f => mh.Schedule(f, port, fallback);
    public static Func<FlowKey, int> Schedule(this KernelSh sh, bool port, bool fallback) => f => sh.Schedule(f, port, fallback);
}
