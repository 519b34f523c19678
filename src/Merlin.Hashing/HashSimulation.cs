using System.Net;

namespace Merlin.Hashing;

/// <summary>The schedulers the simulator compares.</summary>
public enum HashAlgorithm
{
    /// <summary>Merlin's Maglev table, looked up as the nftables dataplane does (jhash … mod M).</summary>
    Maglev,
    /// <summary>The kernel's sh with the 4.x hash (low byte of the product).</summary>
    ShLinux4x,
    /// <summary>The kernel's sh with hash_32 (top 8 bits).</summary>
    ShHash32,
    /// <summary>The kernel's mh (4.18+).</summary>
    Mh,
    /// <summary>The minimal-disruption table: each table derived from the one before, looked up as maglev is.</summary>
    MinimalDisruption,
}

public static class HashAlgorithms
{
    public static IReadOnlyList<HashAlgorithm> All { get; } = [HashAlgorithm.Maglev, HashAlgorithm.ShLinux4x, HashAlgorithm.ShHash32, HashAlgorithm.Mh, HashAlgorithm.MinimalDisruption];

    /// <summary>The name operators type and read: maglev, sh-4.x, sh-fixed, mh, md.</summary>
    public static string Name(this HashAlgorithm algorithm) => algorithm switch
    {
        HashAlgorithm.Maglev => "maglev",
        HashAlgorithm.ShLinux4x => "sh-4.x",
        HashAlgorithm.ShHash32 => "sh-fixed",
        HashAlgorithm.Mh => "mh",
        HashAlgorithm.MinimalDisruption => "md",
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    public static bool TryParse(string? name, out HashAlgorithm algorithm)
    {
        foreach (var a in All)
        {
            if (string.Equals(a.Name(), name?.Trim(), StringComparison.OrdinalIgnoreCase)) { algorithm = a; return true; }
        }
        algorithm = default;
        return false;
    }
}

/// <summary>A server in a simulated set. For the kernel models the id must be "ip:port" or "[ipv6]:port".</summary>
public sealed record SimulationServer(string Id, uint Weight)
{
    /// <summary>N servers 198.18.0.10:80, 198.18.0.11:80, … with the given weights (1 where none is given).</summary>
    public static IReadOnlyList<SimulationServer> Synthetic(int count, IReadOnlyList<uint>? weights = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, 100_000);
        if (weights is not null && weights.Count != count && weights.Count != 1)
            throw new ArgumentException($"{weights.Count} weights for {count} servers (give one for all, or one per server)", nameof(weights));
        var servers = new SimulationServer[count];
        for (int i = 0; i < count; i++)
        {
            servers[i] = new SimulationServer(SyntheticId(i), weights is null ? 1 : weights[weights.Count == 1 ? 0 : i]);
        }
        return servers;
    }

    /// <summary>The i-th synthetic server address: 198.18.0.10 + i, port 80 (inside 198.18.0.0/15).</summary>
    public static string SyntheticId(int i)
    {
        uint a = 0xC6120000u + 10u + (uint)i;   // 198.18.0.0
        return $"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}:80";
    }
}

public sealed record SimulationOptions
{
    /// <summary>Maglev table size; default <see cref="MaglevTable.ChooseSize"/> of the server count. Held fixed across the changes.</summary>
    public int? MaglevTableSize { get; init; }

    /// <summary>The nftables jhash seed (the same on every node).</summary>
    public uint HashSeed { get; init; }

    /// <summary>Hash the source port too: <c>saddr . sport</c> for maglev, the sh-port / mh-port flags for the kernel.</summary>
    public bool HashPort { get; init; } = true;

    /// <summary>sh-fallback / mh-fallback: a flow whose server is unavailable is rescheduled instead of dropped.</summary>
    public bool Fallback { get; init; } = true;

    /// <summary>CONFIG_IP_VS_MH_TAB_INDEX (default 12: 4093 slots).</summary>
    public int MhTabIndex { get; init; } = KernelMh.DefaultTabIndex;

    /// <summary>CONFIG_IP_VS_SH_TAB_BITS (default 8: 256 buckets).</summary>
    public int ShTabBits { get; init; } = KernelSh.DefaultTabBits;

    /// <summary>The server removed and drained in the disruption runs (index in the set); default the middle one.</summary>
    public int? ChangedServer { get; init; }

    /// <summary>Weight of the server added in the disruption run; default the median weight of the set.</summary>
    public uint? AddedWeight { get; init; }

    public IReadOnlyList<HashAlgorithm> Algorithms { get; init; } = HashAlgorithms.All;
}

/// <summary>One server's part in one algorithm's run.</summary>
public sealed record ServerShare(string Id, uint Weight, long Flows, double Share, double ExpectedShare, int Slots);

/// <summary>What one change did to the flows: fractions of ALL flows.</summary>
/// <param name="Change">"add", "remove" or "drain".</param>
/// <param name="Moved">Flows whose server changed (including flows left with none).</param>
/// <param name="Ideal">What must move with a perfectly fair spread: the changed server's share of the total weight (after the add, before a remove or drain).</param>
/// <param name="Needless">Moved flows that did not have to: between two servers that did not change.</param>
/// <param name="Unrouted">Flows with no server after the change (the kernel would drop them).</param>
public sealed record Disruption(string Change, string ServerId, uint Weight, double Moved, double Ideal, double Needless, double Unrouted);

public sealed record AlgorithmReport(
    HashAlgorithm Algorithm,
    string Name,
    int TableSize,
    IReadOnlyList<ServerShare> Servers,
    double MaxOverExpected,
    double MinOverExpected,
    double Unrouted,
    IReadOnlyList<Disruption> Disruptions);

public sealed record SimulationReport(int ServerCount, int FlowCount, SimulationOptions Options, IReadOnlyList<AlgorithmReport> Algorithms);

/// <summary>
/// Runs a flow set through each scheduler for a server set and after three changes (a server
/// added, one removed, one drained to weight 0), and reports how evenly flows spread and how many
/// move. Pure and deterministic; the CLI formats the records (<see cref="SimulationFormatter"/>).
/// </summary>
public static class HashSimulation
{
    public static SimulationReport Run(IReadOnlyList<SimulationServer> servers, IReadOnlyList<FlowKey> flows, SimulationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(servers);
        ArgumentNullException.ThrowIfNull(flows);
        options ??= new SimulationOptions();
        int n = servers.Count;
        if (n == 0) throw new ArgumentException("the server set is empty", nameof(servers));
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in servers)
            if (!ids.Add(s.Id)) throw new ArgumentException($"server \"{s.Id}\" appears twice", nameof(servers));
        int changed = options.ChangedServer ?? n / 2;
        ArgumentOutOfRangeException.ThrowIfNegative(changed, nameof(options.ChangedServer));
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(changed, n, nameof(options.ChangedServer));

        var added = new SimulationServer(NewServerId(servers), options.AddedWeight ?? MedianWeight(servers));
        var weights = servers.Select(s => (int)Math.Min(s.Weight, int.MaxValue)).ToArray();
        var scenarios = new List<Scenario>
        {
            new("base", servers.ToArray(), Identity(n), weights),
            new("add", [.. servers, added], Identity(n + 1), [.. weights, (int)Math.Min(added.Weight, int.MaxValue)]),
            new("remove", servers.Where((_, i) => i != changed).ToArray(), Identity(n).Where(i => i != changed).ToArray(),
                weights.Where((_, i) => i != changed).ToArray()),
            // `ipvsadm -e -w 0`: the weight goes to 0, the kernel's last_weight keeps the old one.
            new("drain", servers.Select((s, i) => i == changed ? s with { Weight = 0 } : s).ToArray(), Identity(n), weights),
        };

        var reports = new List<AlgorithmReport>();
        foreach (var algorithm in options.Algorithms.Distinct())
        {
            var model = Model.Create(algorithm, servers, options);
            var baseline = model.Assign(scenarios[0], flows, out var slots);
            var shares = Shares(servers, baseline, flows.Count, slots);
            var disruptions = new List<Disruption>();
            foreach (var scenario in scenarios.Skip(1))
            {
                var after = model.Assign(scenario, flows, out _);
                disruptions.Add(Compare(scenario, baseline, after, servers, added, changed, flows.Count));
            }
            var fair = shares.Where(s => s.ExpectedShare > 0).ToArray();
            reports.Add(new AlgorithmReport(
                algorithm,
                algorithm.Name(),
                model.TableSize,
                shares,
                fair.Length == 0 || flows.Count == 0 ? 0 : fair.Max(s => s.Share / s.ExpectedShare),
                fair.Length == 0 || flows.Count == 0 ? 0 : fair.Min(s => s.Share / s.ExpectedShare),
                flows.Count == 0 ? 0 : (double)baseline.Count(a => a < 0) / flows.Count,
                disruptions));
        }
        return new SimulationReport(n, flows.Count, options, reports);
    }

    /// <param name="LastWeights">The kernel's last_weight per server: the last non-zero weight it was given (0 if added with 0).</param>
    private sealed record Scenario(string Name, SimulationServer[] Servers, int[] OriginalIndex, int[] LastWeights);

    private static int[] Identity(int n) => Enumerable.Range(0, n).ToArray();

    private static uint MedianWeight(IReadOnlyList<SimulationServer> servers)
    {
        var positive = servers.Select(s => s.Weight).Where(w => w > 0).Order().ToArray();
        return positive.Length == 0 ? 1 : positive[positive.Length / 2];
    }

    private static string NewServerId(IReadOnlyList<SimulationServer> servers)
    {
        var taken = servers.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
        for (int i = servers.Count; ; i++)
        {
            var id = SimulationServer.SyntheticId(i);
            if (!taken.Contains(id)) return id;
        }
    }

    private static ServerShare[] Shares(IReadOnlyList<SimulationServer> servers, int[] assignment, int flowCount, int[] slots)
    {
        var counts = new long[servers.Count];
        foreach (var a in assignment) if (a >= 0) counts[a]++;
        double totalWeight = servers.Sum(s => (double)s.Weight);
        return servers.Select((s, i) => new ServerShare(
            s.Id,
            s.Weight,
            counts[i],
            flowCount == 0 ? 0 : (double)counts[i] / flowCount,
            totalWeight == 0 ? 0 : s.Weight / totalWeight,
            slots[i])).ToArray();
    }

    private static Disruption Compare(Scenario scenario, int[] before, int[] after, IReadOnlyList<SimulationServer> servers,
        SimulationServer added, int changed, int flowCount)
    {
        int changedIndex = scenario.Name == "add" ? servers.Count : changed;
        long moved = 0, needless = 0, unrouted = 0;
        for (int f = 0; f < before.Length; f++)
        {
            if (after[f] < 0) unrouted++;
            if (before[f] == after[f]) continue;
            moved++;
            if (before[f] != changedIndex && after[f] != changedIndex) needless++;
        }
        double total = flowCount == 0 ? 1 : flowCount;
        // The changed server's fair share of the weight: the same yardstick for every algorithm.
        double totalWeight = servers.Sum(s => (double)s.Weight);
        double ideal = scenario.Name == "add"
            ? added.Weight / (totalWeight + added.Weight)
            : totalWeight == 0 ? 0 : servers[changed].Weight / totalWeight;
        var server = scenario.Name == "add" ? added : servers[changed];
        return new Disruption(scenario.Name, server.Id, server.Weight, moved / total, ideal, needless / total, unrouted / total);
    }

    /// <summary>One algorithm: builds its table for a scenario and assigns every flow (to an original server index, or -1).</summary>
    private abstract class Model
    {
        public abstract int TableSize { get; }

        public abstract int[] Assign(Scenario scenario, IReadOnlyList<FlowKey> flows, out int[] slotsPerServer);

        public static Model Create(HashAlgorithm algorithm, IReadOnlyList<SimulationServer> servers, SimulationOptions options) => algorithm switch
        {
            HashAlgorithm.Maglev => new MaglevModel(MaglevTable.ResolveSize(servers.Count, options.MaglevTableSize), options),
            HashAlgorithm.ShLinux4x => new ShModel(ShVariant.Linux4x, options),
            HashAlgorithm.ShHash32 => new ShModel(ShVariant.Hash32, options),
            HashAlgorithm.Mh => new MhModel(options),
            HashAlgorithm.MinimalDisruption => new MinimalDisruptionModel(MaglevTable.ResolveSize(servers.Count, options.MaglevTableSize), options),
            _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
        };

        protected static int[] SlotCounts(Scenario scenario, ReadOnlySpan<int> table)
        {
            // Indexed by original server (the added one last).
            var counts = new int[scenario.OriginalIndex.Length + 2];
            foreach (var t in table) if (t >= 0) counts[scenario.OriginalIndex[t]]++;
            return counts;
        }
    }

    private sealed class MaglevModel(int size, SimulationOptions options) : Model
    {
        private readonly Dictionary<int, int[]> _slotsBySize = [];

        public override int TableSize => size;

        public override int[] Assign(Scenario scenario, IReadOnlyList<FlowKey> flows, out int[] slotsPerServer)
        {
            // The size stays that of the base set while it fits, as a table keeps its size in the
            // dataplane (MaglevTable.KeepOrGrowSize): a new M would move nearly every flow.
            int m = size >= scenario.Servers.Length ? size : MaglevTable.ChooseSize(scenario.Servers.Length);
            var table = new int[m];
            MaglevTable.Build(scenario.Servers.Select(s => (s.Id, s.Weight)).ToArray(), table);
            if (!_slotsBySize.TryGetValue(m, out var slots))
            {
                slots = new int[flows.Count];
                for (int f = 0; f < flows.Count; f++) slots[f] = NftFlowHash.Slot(flows[f], options.HashSeed, m, options.HashPort);
                _slotsBySize[m] = slots;
            }
            slotsPerServer = SlotCounts(scenario, table);
            var result = new int[slots.Length];
            for (int f = 0; f < slots.Length; f++)
            {
                int t = table[slots[f]];
                result[f] = t < 0 ? -1 : scenario.OriginalIndex[t];
            }
            return result;
        }
    }

    /// <summary>The base table from the base set; every change's table derived from it, as the API would store it.</summary>
    private sealed class MinimalDisruptionModel(int size, SimulationOptions options) : Model
    {
        private MinimalDisruptionTable? _base;
        private int[]? _slots;

        public override int TableSize => size;

        public override int[] Assign(Scenario scenario, IReadOnlyList<FlowKey> flows, out int[] slotsPerServer)
        {
            var servers = scenario.Servers.Select(s => (s.Id, s.Weight)).ToArray();
            // M held fixed across the changes, as for maglev.
            var table = _base is null ? (_base = MinimalDisruptionTable.Build(servers, size)) : _base.Next(servers, size);
            if (_slots is null)
            {
                _slots = new int[flows.Count];
                for (int f = 0; f < flows.Count; f++) _slots[f] = NftFlowHash.Slot(flows[f], options.HashSeed, size, options.HashPort);
            }
            // Table server index → scenario index → original index.
            var position = new Dictionary<string, int>(StringComparer.Ordinal);
            for (int i = 0; i < scenario.Servers.Length; i++) position[scenario.Servers[i].Id] = scenario.OriginalIndex[i];
            var original = table.Servers.Select(s => position[s.Id]).ToArray();
            var counts = new int[scenario.OriginalIndex.Length + 2];
            foreach (var o in table.Owners) if (o >= 0) counts[original[o]]++;
            slotsPerServer = counts;
            var result = new int[_slots.Length];
            var owners = table.Owners;
            for (int f = 0; f < _slots.Length; f++)
            {
                int o = owners[_slots[f]];
                result[f] = o < 0 ? -1 : original[o];
            }
            return result;
        }
    }

    private sealed class ShModel(ShVariant variant, SimulationOptions options) : Model
    {
        public override int TableSize => 1 << options.ShTabBits;

        public override int[] Assign(Scenario scenario, IReadOnlyList<FlowKey> flows, out int[] slotsPerServer)
        {
            var sh = KernelSh.Build(KernelDests(scenario), variant, options.ShTabBits);
            slotsPerServer = SlotCounts(scenario, sh.Buckets);
            var result = new int[flows.Count];
            for (int f = 0; f < flows.Count; f++)
            {
                int d = sh.Schedule(flows[f], options.HashPort, options.Fallback);
                result[f] = d < 0 ? -1 : scenario.OriginalIndex[d];
            }
            return result;
        }
    }

    private sealed class MhModel(SimulationOptions options) : Model
    {
        public override int TableSize => KernelMh.TableSizeFor(options.MhTabIndex);

        public override int[] Assign(Scenario scenario, IReadOnlyList<FlowKey> flows, out int[] slotsPerServer)
        {
            var mh = KernelMh.Build(KernelDests(scenario), options.MhTabIndex);
            slotsPerServer = SlotCounts(scenario, mh.Lookup);
            var result = new int[flows.Count];
            for (int f = 0; f < flows.Count; f++)
            {
                int d = mh.Schedule(flows[f], options.HashPort, options.Fallback);
                result[f] = d < 0 ? -1 : scenario.OriginalIndex[d];
            }
            return result;
        }
    }

    // The kernel sees servers in the order they were added: the given order, the added one last.
    private static IpvsDest[] KernelDests(Scenario scenario)
    {
        var dests = new IpvsDest[scenario.Servers.Length];
        for (int i = 0; i < dests.Length; i++)
        {
            var s = scenario.Servers[i];
            var flow = FlowKey.TryParse(s.Id, out var parsed, out var error)
                ? parsed
                : throw new ArgumentException($"server \"{s.Id}\": the kernel schedulers hash an address and port ({error})");
            dests[i] = new IpvsDest(s.Id, flow.KernelFold, flow.Port, (int)Math.Min(s.Weight, int.MaxValue), scenario.LastWeights[i]);
        }
        return dests;
    }
}
