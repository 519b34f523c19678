using BenchmarkDotNet.Running;

namespace Merlin.Benchmarks;

/// <summary>
/// Every benchmark class in this assembly, chosen on the command line, e.g.
/// <c>dotnet run -c Release --project bench/Merlin.Benchmarks -- --filter '*Maglev*' --job short</c>.
/// Add classes in a folder per area (Hashing/, …); nothing needs registering here.
/// </summary>
public static class Program
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
