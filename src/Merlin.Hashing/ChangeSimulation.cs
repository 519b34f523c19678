using System.Globalization;
using System.Text;

namespace Merlin.Hashing;

/// <summary>What one kind of change did over a sequence, for one algorithm. Ratios are moved / ideal, summed over the changes of that kind.</summary>
/// <param name="FlowsMovedOverIdeal">Flows whose server changed / the flows that had to (the share of weight that changed hands).</param>
/// <param name="SlotsMovedOverIdeal">The same in table slots (exact; flows add sampling noise).</param>
/// <param name="WorstSlotsMovedOverIdeal">The largest slots moved / ideal of a single change of this kind.</param>
public sealed record ChangeKindReport(string Kind, int Count, double FlowsMovedOverIdeal, double SlotsMovedOverIdeal, double WorstSlotsMovedOverIdeal);

/// <param name="MaxSlotsOverFair">After the last change: the largest slots / fair share (M·w/W) of any server with weight.</param>
/// <param name="MaxFlowsOverFair">After the last change: the largest flows / fair share of any server with weight.</param>
public sealed record ChangeAlgorithmReport(string Name, IReadOnlyList<ChangeKindReport> Kinds, double MaxSlotsOverFair, double MaxFlowsOverFair);

public sealed record ChangeSimulationReport(int StartServers, int EndServers, int Changes, ulong Seed, int TableSize, int FlowCount,
    IReadOnlyList<uint> Weights, IReadOnlyList<ChangeAlgorithmReport> Algorithms);

/// <summary>
/// A long random change sequence (<see cref="ChangeSequence"/>) through maglev (rebuilt from each set,
/// as the nftables dataplane does) and the minimal-disruption table (each derived from the last).
/// M stays fixed: the set stays between half the start and 100 servers per 100 slots.
/// </summary>
public static class ChangeSimulation
{
    public static IReadOnlyList<string> Algorithms { get; } = ["maglev", "md"];

    public static ChangeSimulationReport Run(int servers, IReadOnlyList<uint> weights, IReadOnlyList<FlowKey> flows, int changes, ulong seed,
        SimulationOptions? options = null, IReadOnlyList<string>? algorithms = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(servers, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(changes);
        ArgumentNullException.ThrowIfNull(flows);
        options ??= new SimulationOptions();
        algorithms ??= Algorithms;
        foreach (var a in algorithms)
            if (!Algorithms.Contains(a)) throw new ArgumentException($"\"{a}\" is not one of {string.Join(", ", Algorithms)}", nameof(algorithms));
        var choices = weights.Count > 0 ? weights.Where(w => w > 0).Distinct().ToArray() : [1u];
        if (choices.Length == 0) choices = [1u];
        int m = MaglevTable.ResolveSize(servers, options.MaglevTableSize);
        int max = Math.Max(servers, m / MaglevTable.SlotsPerBackend);

        // Flows per slot: a change's moved flows are the flows of the slots whose owner changed.
        var flowsPerSlot = new int[m];
        foreach (var f in flows) flowsPerSlot[NftFlowHash.Slot(f, options.HashSeed, m, options.HashPort)]++;

        var sequence = new ChangeSequence(seed, choices, Math.Max(1, servers / 2), max).Start(servers, weights.Count > 0 ? weights : null);
        var number = new Dictionary<string, int>(StringComparer.Ordinal);
        int Number(string id) => number.TryGetValue(id, out var n) ? n : number[id] = number.Count;

        var runs = algorithms.Select(a => new AlgorithmRun(a, m)).ToArray();
        foreach (var run in runs) run.Owners = run.Table(sequence.Servers, Number);
        var before = sequence.Servers.ToList();
        for (int step = 0; step < changes; step++)
        {
            sequence.Step();
            var after = sequence.Servers;
            double idealShare = ChangedShare(before, after);
            foreach (var run in runs)
            {
                var owners = run.Table(after, Number);
                long movedFlows = 0;
                int movedSlots = 0;
                for (int s = 0; s < m; s++)
                {
                    if (owners[s] == run.Owners![s]) continue;
                    movedSlots++;
                    movedFlows += flowsPerSlot[s];
                }
                run.Add(sequence.Kind, movedFlows, idealShare * flows.Count, movedSlots, idealShare * m);
                run.Owners = owners;
            }
            before = after.ToList();
        }

        var reports = new List<ChangeAlgorithmReport>();
        foreach (var run in runs)
        {
            double totalWeight = before.Sum(s => (double)s.Weight);
            var slots = new Dictionary<int, long>();
            var flowCounts = new Dictionary<int, long>();
            for (int s = 0; s < m; s++)
            {
                int o = run.Owners![s];
                if (o < 0) continue;
                slots[o] = slots.GetValueOrDefault(o) + 1;
                flowCounts[o] = flowCounts.GetValueOrDefault(o) + flowsPerSlot[s];
            }
            double maxSlots = 0, maxFlows = 0;
            foreach (var (id, weight) in before)
            {
                if (weight == 0) continue;
                double fair = weight / totalWeight;
                int n = Number(id);
                maxSlots = Math.Max(maxSlots, slots.GetValueOrDefault(n) / (fair * m));
                if (flows.Count > 0) maxFlows = Math.Max(maxFlows, flowCounts.GetValueOrDefault(n) / (fair * flows.Count));
            }
            reports.Add(new ChangeAlgorithmReport(run.Name, run.Report(), maxSlots, maxFlows));
        }
        return new ChangeSimulationReport(servers, before.Count, changes, seed, m, flows.Count, choices, reports);
    }

    /// <summary>The share of the total weight that changed hands: half the L1 distance between the weight shares.</summary>
    internal static double ChangedShare(IReadOnlyList<(string Id, uint Weight)> before, IReadOnlyList<(string Id, uint Weight)> after)
    {
        double wb = before.Sum(s => (double)s.Weight), wa = after.Sum(s => (double)s.Weight);
        var shares = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var (id, w) in before) shares[id] = wb == 0 ? 0 : w / wb;
        foreach (var (id, w) in after) shares[id] = shares.GetValueOrDefault(id) - (wa == 0 ? 0 : w / wa);
        return shares.Values.Sum(Math.Abs) / 2;
    }

    /// <summary>One algorithm's tables through the sequence, as stable server numbers per slot.</summary>
    private sealed class AlgorithmRun(string name, int size)
    {
        private MinimalDisruptionTable? _md;
        private readonly Dictionary<string, (int Count, double Flows, double IdealFlows, double Slots, double IdealSlots, double Worst)> _kinds = new();

        public string Name => name;
        public int[]? Owners { get; set; }

        public int[] Table(IReadOnlyList<(string Id, uint Weight)> servers, Func<string, int> number)
        {
            var owners = new int[size];
            if (name == "md")
            {
                _md = _md is null ? MinimalDisruptionTable.Build(servers, size) : _md.Next(servers, size);
                var ids = _md.Servers.Select(s => number(s.Id)).ToArray();
                for (int s = 0; s < size; s++) owners[s] = _md.Owners[s] < 0 ? -1 : ids[_md.Owners[s]];
                return owners;
            }
            // Built in place: a second table of M slots per change would only be garbage.
            MaglevTable.Build(servers, owners);
            var numbers = servers.Select(s => number(s.Id)).ToArray();
            for (int s = 0; s < size; s++) owners[s] = owners[s] < 0 ? -1 : numbers[owners[s]];
            return owners;
        }

        public void Add(string kind, long flows, double idealFlows, int slots, double idealSlots)
        {
            var k = _kinds.GetValueOrDefault(kind);
            double ratio = idealSlots > 0 ? slots / idealSlots : 0;
            _kinds[kind] = (k.Count + 1, k.Flows + flows, k.IdealFlows + idealFlows, k.Slots + slots, k.IdealSlots + idealSlots, Math.Max(k.Worst, ratio));
        }

        public IReadOnlyList<ChangeKindReport> Report()
        {
            var result = new List<ChangeKindReport>();
            (int Count, double Flows, double IdealFlows, double Slots, double IdealSlots, double Worst) all = default;
            foreach (var kind in ChangeSequence.Kinds)
            {
                if (!_kinds.TryGetValue(kind, out var k)) continue;
                result.Add(new ChangeKindReport(kind, k.Count, Ratio(k.Flows, k.IdealFlows), Ratio(k.Slots, k.IdealSlots), k.Worst));
                all = (all.Count + k.Count, all.Flows + k.Flows, all.IdealFlows + k.IdealFlows, all.Slots + k.Slots, all.IdealSlots + k.IdealSlots, Math.Max(all.Worst, k.Worst));
            }
            if (all.Count > 0) result.Add(new ChangeKindReport("all", all.Count, Ratio(all.Flows, all.IdealFlows), Ratio(all.Slots, all.IdealSlots), all.Worst));
            return result;
        }

        private static double Ratio(double moved, double ideal) => ideal > 0 ? moved / ideal : 0;
    }

    public static string Format(ChangeSimulationReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.Append(inv, $"{report.Changes} random changes from {report.StartServers} servers (seed {report.Seed}; weights {string.Join(",", report.Weights)}); ");
        sb.Append(inv, $"table size {report.TableSize}, {report.FlowCount} flows; {report.EndServers} servers at the end\n");
        sb.Append("moved / ideal, summed over the changes of a kind (flows, and slots); worst single change in slots\n");
        sb.Append("change".PadRight(10)).Append("count".PadLeft(7));
        foreach (var a in report.Algorithms) sb.Append($"{a.Name} flows".PadLeft(14)).Append($"{a.Name} slots".PadLeft(14)).Append($"{a.Name} worst".PadLeft(14));
        sb.Append('\n');
        var kinds = report.Algorithms.FirstOrDefault()?.Kinds ?? [];
        for (int k = 0; k < kinds.Count; k++)
        {
            sb.Append(kinds[k].Kind.PadRight(10)).Append(kinds[k].Count.ToString(inv).PadLeft(7));
            foreach (var a in report.Algorithms)
            {
                var r = a.Kinds[k];
                sb.Append(Times(r.FlowsMovedOverIdeal).PadLeft(14)).Append(Times(r.SlotsMovedOverIdeal).PadLeft(14)).Append(Times(r.WorstSlotsMovedOverIdeal).PadLeft(14));
            }
            sb.Append('\n');
        }
        sb.Append("after the last change, max / fair share:");
        foreach (var a in report.Algorithms)
            sb.Append(inv, $" {a.Name} slots {a.MaxSlotsOverFair:0.0000}, flows {a.MaxFlowsOverFair:0.0000};");
        sb.Length--;
        sb.Append('\n');
        return sb.ToString();
    }

    private static string Times(double x) => x.ToString("0.000", CultureInfo.InvariantCulture) + "x";
}
