using BenchmarkDotNet.Attributes;
using Merlin.Hashing;

namespace Merlin.Benchmarks.Hashing;

/// <summary>
/// Per-flow cost of picking a server: 1,024 flows per invocation (divide by 1,024 for one flow).
/// Maglev = nft's jhash(saddr . sport) + reciprocal_scale + a table read, as the simulator does it.
/// </summary>
[MemoryDiagnoser, MinColumn, MedianColumn]
public class LookupBenchmarks
{
    private const int Flows = 1024;
    private FlowKey[] _flows = [];
    private int[] _maglev = [];
    private KernelMh _mh = null!;
    private KernelSh _sh4x = null!;
    private KernelSh _shFixed = null!;

    [GlobalSetup]
    public void Setup()
    {
        _flows = SyntheticFlows.Generate(Flows, 1);
        var servers = Enumerable.Range(0, 10).Select(i => SimulationServer.SyntheticId(i)).ToArray();
        _maglev = MaglevTable.Build(servers.Select(s => (s, 1u)).ToArray(), 1021);
        var dests = servers.Select(s => IpvsDest.Create(s, 1)).ToArray();
        _mh = KernelMh.Build(dests);
        _sh4x = KernelSh.Build(dests, ShVariant.Linux4x);
        _shFixed = KernelSh.Build(dests, ShVariant.Hash32);
    }

    [Benchmark(OperationsPerInvoke = Flows, Baseline = true)]
    public int Maglev()
    {
        int sum = 0;
        foreach (ref readonly var f in _flows.AsSpan())
            sum += _maglev[NftFlowHash.Slot(f, 0x5eed, _maglev.Length)];
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Flows)]
    public int KernelMhSchedule()
    {
        int sum = 0;
        foreach (ref readonly var f in _flows.AsSpan()) sum += _mh.Schedule(f, true, true);
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Flows)]
    public int KernelSh4xSchedule()
    {
        int sum = 0;
        foreach (ref readonly var f in _flows.AsSpan()) sum += _sh4x.Schedule(f, true, true);
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Flows)]
    public int KernelShFixedSchedule()
    {
        int sum = 0;
        foreach (ref readonly var f in _flows.AsSpan()) sum += _shFixed.Schedule(f, true, true);
        return sum;
    }
}
