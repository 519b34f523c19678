using System.CommandLine;
using System.Globalization;
using Merlin.Cli.Output;
using Merlin.Cli.Parsing;
using Merlin.Hashing;

namespace Merlin.Cli.Commands;

/// <summary>
/// <c>meradm hash simulate</c>: the seed's investigation as a tool. Runs locally (no daemon): for a
/// server set and a flow set, how evenly maglev, the kernel's sh (4.x and fixed) and mh spread
/// flows, and how many flows move when a server is added, removed or drained.
/// </summary>
internal static class HashCommands
{
    public static Command Create(CliContext ctx)
    {
        var hash = new Command("hash", "Study consistent-hashing schedulers before choosing one");
        var servers = Parsers.UInt("--servers", ["-n"], "Number of real servers", min: 1, max: 10_000);
        var weights = Parsers.List("--weights", ["-w"], "Weights of the servers, comma-separated (default all 1; cycled if shorter)", "w1,w2,…");
        var flows = Parsers.UInt("--flows", ["-f"], "Number of synthetic flows [default: 100000]", min: 1, max: 10_000_000);
        var flowsFile = new Option<FileInfo?>("--flows-file") { Description = "Flows to use instead of synthetic ones: one client ip:port per line", HelpName = "path" };
        var seed = Parsers.UInt("--seed", [], "Seed of the synthetic flows [default: 1]");
        var pattern = new Option<string>("--pattern") { Description = "Synthetic client addresses: random, few-clients (16 NAT gateways) or same-low-byte (the 4.x sh worst case) [default: random]", HelpName = "pattern" };
        var tableSize = Parsers.UInt("--table-size", [], "Maglev table size (a prime; default the smallest of the fixed list ≥ 100 × servers)", min: 3, max: (uint)MaglevTable.MaxSize);
        var hashSeed = Parsers.Option<uint>("--hash-seed", [], "jhash seed of the nftables dataplane, hex [default: 0]", TryParseHex, "hex");
        var noPort = new Option<bool>("--no-port") { Description = "Hash the client address only (no sh-port / mh-port)" };
        var algorithms = Parsers.List("--algorithms", ["-a"], "Which to compare: maglev, sh-4.x, sh-fixed, mh, md [default: all; with --changes: maglev, md]", "a,b");
        var changes = Parsers.UInt("--changes", [], "Instead of one add/remove/drain: this many random changes (add, remove, drain, undrain, reweight; seeded by --seed) through maglev and md, with moved / ideal per kind of change", min: 1, max: 100_000);

        var simulate = new Command("simulate", "Compare flow spread and disruption of maglev, sh (4.x and fixed), mh and md (the minimal-disruption table)")
        {
            servers, weights, flows, flowsFile, seed, pattern, tableSize, hashSeed, noPort, algorithms, changes,
        };
        simulate.SetAction(result =>
        {
            if (!result.IsGiven(servers)) return ctx.UsageError("hash simulate: --servers is required");
            var count = (int)result.GetValue(servers);
            var weightList = new List<uint>();
            foreach (var w in (result.GetValue(weights) ?? []).SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
            {
                if (!uint.TryParse(w, NumberStyles.None, CultureInfo.InvariantCulture, out var parsed) || parsed > Model.Validation.MaxWeight)
                    return ctx.UsageError($"--weights: \"{w}\" is not a weight (0-{Model.Validation.MaxWeight})");
                weightList.Add(parsed);
            }
            var selected = new List<HashAlgorithm>();
            var names = (result.GetValue(algorithms) ?? []).SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();
            if (result.IsGiven(changes))
            {
                foreach (var a in names)
                    if (!ChangeSimulation.Algorithms.Contains(a.ToLowerInvariant()))
                        return ctx.UsageError($"--algorithms: \"{a}\" cannot run a change sequence (one of {string.Join(", ", ChangeSimulation.Algorithms)})");
            }
            foreach (var a in result.IsGiven(changes) ? [] : names)
            {
                if (!HashAlgorithms.TryParse(a, out var algorithm))
                    return ctx.UsageError($"--algorithms: \"{a}\" is not one of {string.Join(", ", HashAlgorithms.All.Select(x => x.Name()))}");
                selected.Add(algorithm);
            }
            var flowPattern = FlowPattern.Random;
            if (result.GetValue(pattern) is { } p && !TryParsePattern(p, out flowPattern))
                return ctx.UsageError($"--pattern: \"{p}\" is not one of random, few-clients, same-low-byte");

            FlowKey[] flowSet;
            if (result.GetValue(flowsFile) is { } file)
            {
                if (!file.Exists) return ctx.UsageError($"--flows-file: {file.FullName} does not exist");
                var list = new List<FlowKey>();
                var line = 0;
                foreach (var text in File.ReadLines(file.FullName))
                {
                    line++;
                    if (string.IsNullOrWhiteSpace(text) || text.TrimStart().StartsWith('#')) continue;
                    if (!FlowKey.TryParse(text.Trim(), out var flow, out var error)) return ctx.UsageError($"--flows-file: line {line}: {error}");
                    list.Add(flow);
                }
                if (list.Count == 0) return ctx.UsageError($"--flows-file: {file.FullName} holds no flows");
                flowSet = [.. list];
            }
            else
            {
                var n = result.IsGiven(flows) ? (int)result.GetValue(flows) : 100_000;
                flowSet = SyntheticFlows.Generate(n, result.IsGiven(seed) ? result.GetValue(seed) : 1, flowPattern);
            }

            var options = new SimulationOptions
            {
                MaglevTableSize = result.IsGiven(tableSize) ? (int)result.GetValue(tableSize) : null,
                HashSeed = result.IsGiven(hashSeed) ? result.GetValue(hashSeed) : 0,
                HashPort = !result.GetValue(noPort),
                Algorithms = selected.Count > 0 ? selected : HashAlgorithms.All,
            };
            if (options.MaglevTableSize is { } m && MaglevTable.ValidateSize(m, count) is { } sizeError)
                return ctx.UsageError($"--table-size: {sizeError}");

            if (result.IsGiven(changes))
            {
                var sequence = ChangeSimulation.Run(count, weightList, flowSet, (int)result.GetValue(changes), result.IsGiven(seed) ? result.GetValue(seed) : 1, options,
                    names.Count > 0 ? names.Select(a => a.ToLowerInvariant()).Distinct().ToList() : null);
                if (ctx.Output(result) == OutputFormat.Json) Json.Write(ctx.Out, sequence);
                else ctx.Out.Write(ChangeSimulation.Format(sequence));
                return CliContext.Ok;
            }

            // Cycled, as --help promises (the simulator itself takes one weight or one per server).
            var cycled = weightList.Count == 0 ? null : Enumerable.Range(0, count).Select(i => weightList[i % weightList.Count]).ToList();
            var report = HashSimulation.Run(SimulationServer.Synthetic(count, cycled), flowSet, options);
            if (ctx.Output(result) == OutputFormat.Json) Json.Write(ctx.Out, report);
            else ctx.Out.Write(SimulationFormatter.Format(report));
            return CliContext.Ok;
        });
        hash.Subcommands.Add(simulate);
        return hash;
    }

    private static bool TryParseHex(string text, out uint value, out string? error)
    {
        var t = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? text[2..] : text;
        if (uint.TryParse(t, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value)) { error = null; return true; }
        error = $"\"{text}\" is not a 32-bit hex number (e.g. 0x5eed1234)";
        return false;
    }

    private static bool TryParsePattern(string text, out FlowPattern pattern)
    {
        pattern = text.Trim().ToLowerInvariant() switch
        {
            "random" => FlowPattern.Random,
            "same-low-byte" => FlowPattern.SameLowByte,
            "few-clients" => FlowPattern.FewClients,
            _ => (FlowPattern)(-1),
        };
        return (int)pattern >= 0;
    }
}
