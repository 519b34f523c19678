using System.Diagnostics;
using System.Globalization;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Nftables.Bench;

/// <summary>
/// Issue 18's Maglev row (--profile-maglev): a DSR map of N servers at the size Merlin picks, built the way the
/// dataplane builds a new map (<see cref="TableRenderer.Slots"/>: the Maglev table and the map content it keeps),
/// and the bare Maglev build into a pooled buffer, each timed over a number of builds with the gen-2 collections
/// they caused; with --katran, Katran's MaglevHashV2 harness runs right after, same N, weights and M, for the ratio.
/// </summary>
internal static class MaglevMapProfile
{
    public static int Run(int servers, int builds, string? katran)
    {
        int size = MaglevTable.ChooseSize(servers);
        // Weights 1–100 as MaglevBuildBenchmarks and the Katran harness (1 + i·37 mod 100).
        var backends = Enumerable.Range(0, servers)
            .Select(i => new LayoutBuilder.Backend($"198.18.{i / 250}.{i % 250 + 1}", (uint)(1 + i * 37 % 100), $"02:00:00:00:{i / 256:x2}:{i % 256:x2}", null))
            .ToList();
        var plan = new LayoutBuilder.ServicePlan(ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.255.1"), 80, Protocol.Tcp), true, size,
            $"dsr M={size}", "profile", "4p", backends);
        var pairs = backends.Select(b => (b.Id, b.Weight)).ToList();

        Console.WriteLine($"N = {servers}, M = {size}, {builds} builds each, weights 1-100; uptime: {File.ReadAllText("/proc/loadavg").Trim()}");
        // Warm up (JIT, the pool) before counting.
        for (int i = 0; i < 3; i++) { _ = TableRenderer.Slots(plan).Count; Bare(pairs, size); }
        Measure("map content (TableRenderer.Slots)", builds, () => _ = TableRenderer.Slots(plan).Count);
        Measure("Maglev table, pooled buffer", builds, () => Bare(pairs, size));
        if (katran is not null)
        {
            using var process = Process.Start(new ProcessStartInfo(katran, [servers.ToString(CultureInfo.InvariantCulture), size.ToString(CultureInfo.InvariantCulture), "1", builds.ToString(CultureInfo.InvariantCulture)])
            { RedirectStandardOutput = true })!;
            Console.Write(process.StandardOutput.ReadToEnd());
            process.WaitForExit();
        }
        Console.WriteLine($"uptime after: {File.ReadAllText("/proc/loadavg").Trim()}");
        return 0;
    }

    private static void Bare(List<(string Id, uint Weight)> pairs, int size)
    {
        var rented = System.Buffers.ArrayPool<int>.Shared.Rent(size);
        try { MaglevTable.Build(pairs, rented.AsSpan(0, size)); }
        finally { System.Buffers.ArrayPool<int>.Shared.Return(rented); }
    }

    private static void Measure(string what, int builds, Action build)
    {
        int gen2 = GC.CollectionCount(2);
        double best = double.MaxValue, total = 0;
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        for (int b = 0; b < builds; b++)
        {
            long start = Stopwatch.GetTimestamp();
            build();
            double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            total += ms;
            best = Math.Min(best, ms);
        }
        var cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds;
        Console.WriteLine($"ours {what}: mean={total / builds:0.000} ms min={best:0.000} ms cpu/build={cpuMs / builds:0.000} ms gen2={GC.CollectionCount(2) - gen2}");
    }
}
