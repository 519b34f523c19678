using System.Buffers;
using BenchmarkDotNet.Attributes;
using Merlin.Hashing;

namespace Merlin.Benchmarks.Hashing;

/// <summary>
/// Where a Maglev build's table lives, at the size Merlin picks for N = 1,000 (M = 131,071: a 512 KiB
/// table, on the large-object heap): a fresh array per build (what the nftables dataplane did),
/// a buffer rented from <see cref="ArrayPool{T}.Shared"/> (what it does now), and one buffer reused.
/// Issue 18's row compares these with Katran's MaglevHashV2 built by g++ -O2 on the same machine
/// (docs/performance.md has the command); the goal is ≤ 0.7 of Katran and no gen-2 collection from builds.
/// </summary>
[MemoryDiagnoser, MinColumn, MedianColumn]
public class MaglevBufferBenchmarks
{
    private const int Size = 131071;
    private (string Id, uint Weight)[] _backends = [];
    private int[] _table = [];

    /// <summary>Weights 1–100 (as <see cref="MaglevBuildBenchmarks"/>) or all equal.</summary>
    [Params(true, false)]
    public bool Weighted { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _backends = Enumerable.Range(0, 1000)
            .Select(i => (SimulationServer.SyntheticId(i), Weighted ? (uint)(1 + i * 37 % 100) : 1u))
            .ToArray();
        _table = new int[Size];
    }

    [Benchmark(Baseline = true)]
    public int Fresh() => MaglevTable.Build(_backends, Size)[0];

    [Benchmark]
    public int Pooled()
    {
        var rented = ArrayPool<int>.Shared.Rent(Size);
        try
        {
            MaglevTable.Build(_backends, rented.AsSpan(0, Size));
            return rented[0];
        }
        finally
        {
            ArrayPool<int>.Shared.Return(rented);
        }
    }

    [Benchmark]
    public int Reused()
    {
        MaglevTable.Build(_backends, _table);
        return _table[0];
    }
}
