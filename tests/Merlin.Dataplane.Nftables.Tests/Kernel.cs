using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Neighbours;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>
/// A network namespace of the test's own (unique name), deleted on Dispose even when the test
/// failed. Everything the kernel tests do happens inside it; nothing touches the root namespace.
/// </summary>
internal sealed class TestNamespace : IDisposable
{
    private static int _counter;

    public string Name { get; }

    private TestNamespace(string name) => Name = name;

    /// <summary>Skips outside CI (fails in CI) unless the test runs as root with nft and ip.</summary>
    public static void Require()
    {
        Requires.Root();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("ip", "apt-get install iproute2");
    }

    /// <summary>A namespace with an up veth pair eth0 ↔ peer0, so netdev chains have a device to hook.</summary>
    public static TestNamespace WithInterface()
    {
        Require();
        var name = $"mnft-{Environment.ProcessId}-{Interlocked.Increment(ref _counter)}";
        Host("ip", "netns", "add", name);
        var ns = new TestNamespace(name);
        try
        {
            ns.Ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0");
            ns.Ip("link", "set", "eth0", "up");
            ns.Ip("link", "set", "peer0", "up");
            ns.Ip("link", "set", "lo", "up");
            return ns;
        }
        catch
        {
            ns.Dispose();
            throw;
        }
    }

    public static TestNamespace Empty(string suffix)
    {
        Require();
        var name = $"mnft-{Environment.ProcessId}-{Interlocked.Increment(ref _counter)}-{suffix}";
        Host("ip", "netns", "add", name);
        return new TestNamespace(name);
    }

    public string Ip(params string[] args) => Host("ip", ["-n", Name, .. args]);

    public string Nft(params string[] args) => Host("ip", ["netns", "exec", Name, "nft", .. args]);

    public string NftScript(string script) => Host("ip", ["netns", "exec", Name, "nft", "-f", "-"], script);

    /// <summary>The kernel's ruleset generation in this namespace.</summary>
    public uint Generation()
    {
        using var socket = NfNetlink.Open(Name);
        return NfTablesReader.Generation(socket);
    }

    public IReadOnlyList<KernelTable> Tables(params (string, string)[] tables)
    {
        using var socket = NfNetlink.Open(Name);
        return tables.Select(t => NfTablesReader.ReadTable(socket, t.Item1, t.Item2)).OfType<KernelTable>().ToList();
    }

    public void Dispose()
    {
        try { Host("ip", "netns", "del", Name); }
        catch (InvalidOperationException) { }
    }

    public static string Host(string file, params string[] args) => Host(file, args, null);

    public static string Host(string file, string[] args, string? input)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = input is not null };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        if (input is not null)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }
        var output = process.StandardOutput.ReadToEnd();
        var error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)}: {error.Trim()}");
        return output;
    }
}

/// <summary>A neighbour table the test fills in.</summary>
internal sealed class FakeNeighbours : INeighbours
{
    public Dictionary<IPAddress, PhysicalAddress> Table { get; } = new();
    public List<IPAddress> Tracked { get; } = new();
    public List<IPAddress> Untracked { get; } = new();

    public Task<PhysicalAddress?> LinkAddressAsync(string device, CancellationToken ct) => Task.FromResult<PhysicalAddress?>(Given.OwnMac);

    public Task<IReadOnlyDictionary<IPAddress, PhysicalAddress>> ReadAsync(string device, CancellationToken ct) =>
        Task.FromResult<IReadOnlyDictionary<IPAddress, PhysicalAddress>>(new Dictionary<IPAddress, PhysicalAddress>(Table));

    public Task TrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct)
    {
        Tracked.AddRange(addresses);
        return Task.CompletedTask;
    }

    public Task UntrackAsync(IReadOnlyCollection<IPAddress> addresses, string device, CancellationToken ct)
    {
        Untracked.AddRange(addresses);
        return Task.CompletedTask;
    }

    public static FakeNeighbours For(IEnumerable<ServiceState> services)
    {
        var fake = new FakeNeighbours();
        foreach (var (address, mac) in Given.MacsFor(services)) fake.Table[address] = mac;
        return fake;
    }
}

/// <summary>Passes everything to the real writer (libnftables, as the daemon's), keeping each script.</summary>
internal sealed class RecordingNftables(INftables inner) : INftables
{
    public List<string> Scripts { get; } = new();

    public Task RunAsync(string script, CancellationToken ct)
    {
        Scripts.Add(script);
        return inner.RunAsync(script, ct);
    }

    /// <summary>Passes the script object on, so the writer renders it as the dataplane's own would.</summary>
    public Task RunAsync(Layout.NftScript script, CancellationToken ct)
    {
        Scripts.Add(script.ToString());
        return inner.RunAsync(script, ct);
    }

    /// <summary>Sets listed (audits), as "family table name".</summary>
    public List<string> Listed { get; } = new();

    public Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct)
    {
        Listed.Add($"{family} {table} {name}");
        return inner.ListSetJsonAsync(kind, family, table, name, ct);
    }

    public Task<uint> GenerationAsync(CancellationToken ct) => inner.GenerationAsync(ct);

    public Task<IReadOnlyList<KernelTable>> ReadTablesAsync(IReadOnlyList<(string Family, string Name)> tables, CancellationToken ct) => inner.ReadTablesAsync(tables, ct);

    public bool CanStage => inner.CanStage;

    /// <summary>Sets made over netlink ahead of a transaction, as "family table name".</summary>
    public List<string> Staged { get; } = new();

    public Task<StageResult> StageAsync(IReadOnlyList<StagedSet> sets, CancellationToken ct)
    {
        Staged.AddRange(sets.Select(s => $"{s.Family} {s.Table} {s.Set.Name}"));
        return inner.StageAsync(sets, ct);
    }

    public Task UnstageAsync(StageResult staging, IReadOnlyList<StagedSet> sets, CancellationToken ct) => inner.UnstageAsync(staging, sets, ct);

    public Task<IReadOnlyList<SetElement>> ReadElementsAsync(string family, string table, string set, CancellationToken ct) => inner.ReadElementsAsync(family, table, set, ct);

    /// <summary>Elements deleted by key (pins swept), as "family table set: count", and " again" for the sweep's second look.</summary>
    public List<string> Deleted { get; } = new();

    public Task<int?> DeleteElementsAsync(string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone, CancellationToken ct)
    {
        Deleted.Add($"{family} {table} {set}: {keys.Count}{(evenIfGone ? " again" : "")}");
        return inner.DeleteElementsAsync(family, table, set, keys, evenIfGone, ct);
    }
}

internal static class KernelDataplane
{
    public static (NftablesDataplane Dataplane, RecordingNftables Nft) Create(TestNamespace ns, INeighbours neighbours, NftablesOptions? options = null, TimeProvider? time = null)
    {
        options = (options ?? Given.Options()) with { NetworkNamespace = ns.Name };
        var nft = new RecordingNftables(NftKernel.Open(options, new ProcessRunner(ns.Name, options.IpPath), NullLogger.Instance));
        return (new NftablesDataplane(options, nft, neighbours, NullLogger.Instance, time ?? TimeProvider.System), nft);
    }

    /// <summary>One reconcile pass as the reconciler does it: read, plan, apply the plan as one batch.</summary>
    public static async Task<int> ReconcileAsync(this NftablesDataplane dataplane, IReadOnlyDictionary<Model.ServiceKey, ServiceState> desired)
    {
        var actual = await dataplane.ReadAsync(CancellationToken.None);
        var plan = Planner.Plan(new DataplaneState(desired), actual);
        if (plan.Count == 0) return 0;
        var errors = await dataplane.ApplyAsync(plan, CancellationToken.None);
        var failed = errors.Select((e, i) => (e, i)).Where(x => x.e is not null).ToList();
        if (failed.Count > 0) throw new InvalidOperationException(string.Join("\n", failed.Select(f => $"{plan[f.i]}: {f.e!.Message}")));
        return plan.Count;
    }
}
