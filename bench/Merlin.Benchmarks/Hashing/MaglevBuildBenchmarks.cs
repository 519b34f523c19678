using BenchmarkDotNet.Attributes;
using Merlin.Hashing;

namespace Merlin.Benchmarks.Hashing;

/// <summary>
/// Maglev table build (identity hashes + fill) into a reused buffer. The goal: N = 1,000
/// weighted servers, M = 65,537 in ≤ 3 ms.
/// </summary>
[MemoryDiagnoser, MinColumn, MedianColumn]
public class MaglevBuildBenchmarks
{
    private (string Id, uint Weight)[] _backends = [];
    private int[] _table = [];

    /// <summary>N (w = weighted 1–100, else equal) / M.</summary>
    [Params("1000w/65537", "1000/65537", "10/251")]
    public string Case { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        var (n, weighted, m) = Case switch
        {
            "1000w/65537" => (1000, true, 65537),    // N = 1,000, weights 1–100, M = 65,537
            "1000/65537" => (1000, false, 65537),    // equal weights
            "10/251" => (10, false, 251),
            _ => throw new ArgumentException(Case),
        };
        // Weights 1–100, spread deterministically.
        _backends = Enumerable.Range(0, n)
            .Select(i => (SimulationServer.SyntheticId(i), weighted ? (uint)(1 + i * 37 % 100) : 1u))
            .ToArray();
        _table = new int[m];
    }

    [Benchmark]
    public int Build()
    {
        MaglevTable.Build(_backends, _table);
        return _table[0];
    }
}
