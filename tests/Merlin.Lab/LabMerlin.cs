using System.Globalization;
using System.Text.Json;

namespace Merlin.Lab;

/// <summary>How <see cref="LabMerlin.StartAsync"/> runs the real merlin daemon in a load balancer's namespace.</summary>
public sealed record LabMerlinOptions
{
    /// <summary>etcd client URL (e.g. from <see cref="LabMerlin.StartEtcdAsync"/>); null: an SQLite store of this daemon's own in the lab's temp dir.</summary>
    public string? EtcdEndpoint { get; init; }

    /// <summary>The jhash seed: the same on every node, or flows move when a VIP does.</summary>
    public string HashSeed { get; init; } = LabMerlin.DefaultSeed;

    public TimeSpan SyncPeriod { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>More daemon flags, after the lab's own (a repeated flag's last value wins): e.g. <c>--announcer vrrp …</c>.</summary>
    public IReadOnlyList<string> ExtraArgs { get; init; } = [];

    /// <summary>
    /// Serve the API with TLS on the load balancer's lab address (where real-server agents reach it),
    /// requiring client certificates from this CA; meradm then uses the daemon's Unix socket. Null: plain
    /// HTTP/2 on the namespace's loopback only.
    /// </summary>
    public LabMerlinTls? Tls { get; init; }
}

/// <summary>The daemon's certificate and key, and the CA its clients' certificates must chain to (PEM files).</summary>
public sealed record LabMerlinTls(string CertFile, string KeyFile, string ClientCaFile);

/// <summary>
/// The real <c>merlin</c> daemon (<c>--dataplane nftables --interface eth0</c>) running inside a lab host's
/// namespace, its API and health endpoints bound to that namespace's own loopback (127.0.0.1:4282 and
/// :4283 are private to each namespace), and <c>meradm</c> run in the same namespace to talk to it.
/// Disposing stops the daemon (by PID); the lab's teardown removes its namespace and what it programmed.
/// </summary>
public sealed class LabMerlin : IAsyncDisposable
{
    public const string DefaultSeed = "0x5eed1234";
    public const int ApiPort = 4282;
    public const int HealthPort = 4283;
    public const int EtcdPort = 2379;

    private readonly string? _socket;

    private LabMerlin(LabHost host, LabProcess process, string? socket)
    {
        Host = host;
        Process = process;
        _socket = socket;
    }

    public LabHost Host { get; }

    public LabProcess Process { get; }

    /// <summary>merlin.dll, copied next to this assembly by the project reference.</summary>
    public static string DaemonDll => Beside("merlin.dll");

    /// <summary>meradm.dll, copied next to this assembly by the project reference.</summary>
    public static string MeradmDll => Beside("meradm.dll");

    /// <summary>
    /// Starts a single-member etcd on <paramref name="host"/> (an extra host such as "etcd"), listening on
    /// the host's lab address only, with its data in the lab's temp dir; returns its client URL once it serves.
    /// </summary>
    public static async Task<(LabProcess Process, string Endpoint)> StartEtcdAsync(LabHost host, CancellationToken ct = default)
    {
        var etcd = Merlin.Testing.Requires.FindOnPath("etcd") ?? throw new InvalidOperationException("etcd is not on PATH (apt-get install etcd-server)");
        var client = $"http://{host.Address}:{EtcdPort}";
        var peer = $"http://{host.Address}:{EtcdPort + 1}";
        var process = host.Start(etcd,
            "--name", "lab", "--data-dir", Path.Combine(host.Lab.TempPath, $"etcd-{host.Name}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", $"lab={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "info");
        try
        {
            // etcd 3.4 says "serving client traffic insecurely", later versions "ready to serve client requests".
            await process.WaitForLineAsync(l => l.Contains("serving client traffic", StringComparison.Ordinal) || l.Contains("ready to serve client requests", StringComparison.Ordinal), TimeSpan.FromSeconds(60), 0, ct);
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
        return (process, client);
    }

    /// <summary>Starts the daemon on <paramref name="lb"/> and waits until its API answers.</summary>
    public static async Task<LabMerlin> StartAsync(LabHost lb, LabMerlinOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new LabMerlinOptions();
        var store = o.EtcdEndpoint is { } endpoint
            ? new[] { "--store-backend", "etcd3", "--store-endpoints", endpoint }
            : ["--store-backend", "sqlite", "--store-path", Path.Combine(lb.Lab.TempPath, $"merlin-{lb.Name}.db")];
        var socket = o.Tls is null ? null : Path.Combine(lb.Lab.TempPath, $"merlin-{lb.Name}.sock");
        string[] api = o.Tls is { } tls
            ? ["--listen-address", lb.Address.ToString(), "--tls-cert", tls.CertFile, "--tls-key", tls.KeyFile, "--tls-client-ca", tls.ClientCaFile, "--unix-socket", socket!]
            : ["--listen-address", "127.0.0.1"];
        List<string> argv = [LabPrograms.Dotnet, DaemonDll,
            .. api, "--port", Int(ApiPort),
            "--health-listen-address", "127.0.0.1", "--health-port", Int(HealthPort),
            .. store,
            "--dataplane", "nftables", "--interface", lb.Interface, "--hash-seed", o.HashSeed,
            "--reconcile-sync-period", $"{(int)o.SyncPeriod.TotalSeconds}s",
            "--state-dir", Path.Combine(lb.Lab.TempPath, $"state-{lb.Name}"), .. o.ExtraArgs];
        var process = lb.Start(argv);
        var daemon = new LabMerlin(lb, process, socket);
        try
        {
            await process.WaitForLineAsync(l => l.Contains("listening: API", StringComparison.Ordinal), TimeSpan.FromSeconds(60), 0, ct);
        }
        catch
        {
            await daemon.DisposeAsync();
            throw;
        }
        return daemon;
    }

    /// <summary>Runs <c>meradm ARGS… -H 127.0.0.1:4282</c> (with TLS: <c>--unix-socket</c>) in this daemon's namespace; throws if it fails.</summary>
    public async Task<LabCommandResult> MeradmAsync(params string[] args)
    {
        string[] to = _socket is null ? ["-H", $"127.0.0.1:{ApiPort}"] : ["--unix-socket", _socket];
        var r = await Host.RunAsync([.. Meradm(), .. args, .. to], TimeSpan.FromSeconds(60));
        if (!r.Succeeded) throw new LabCommandException(r);
        return r;
    }

    /// <summary><c>meradm status -o json</c>.</summary>
    public async Task<JsonElement> StatusAsync()
    {
        // A generous deadline: on a machine busy with other builds a first status can take longer than meradm's default 10 s.
        var r = await MeradmAsync("status", "-o", "json", "--timeout", "30s");
        using var doc = JsonDocument.Parse(r.StandardOutput);
        return doc.RootElement.Clone();
    }

    /// <summary>
    /// Waits until the daemon reports a pass that read <paramref name="services"/> services and
    /// <paramref name="servers"/> real servers from the store and programmed all of them (ready).
    /// </summary>
    public async Task WaitProgrammedAsync(int services, int servers, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        JsonElement last = default;
        while (clock.Elapsed < limit)
        {
            ct.ThrowIfCancellationRequested();
            last = await StatusAsync();
            if (last.GetProperty("ready").GetBoolean() && last.GetProperty("services").GetInt32() == services && last.GetProperty("servers").GetInt32() == servers)
                return;
            await Task.Delay(300, ct);
        }
        throw new TimeoutException($"{Host.Name}: the daemon did not program {services} services and {servers} servers within {limit.TotalSeconds:0} s; last status {last}\n{LabCommandResult.Tail(Process.Output)}");
    }

    /// <summary>
    /// Compares two runs of the same flows (<see cref="LabRequestOptions.SourcePorts"/> with
    /// <see cref="LabRequestOptions.Flows"/>): of the source ports answered in both, how many were answered
    /// by another server the second time, and how many of those by a server absent from the first run.
    /// </summary>
    public static (int Compared, int Moved, int ToNew) CompareFlows(Merlin.Lab.Server.RequestReport before, Merlin.Lab.Server.RequestReport after)
    {
        var first = (before.Flows ?? throw new ArgumentException("the first run has no flows (Flows = true)", nameof(before)))
            .Where(f => f.Server is not null).GroupBy(f => f.SourcePort).ToDictionary(g => g.Key, g => g.First().Server!);
        var known = first.Values.ToHashSet(StringComparer.Ordinal);
        int compared = 0, moved = 0, toNew = 0;
        foreach (var flow in (after.Flows ?? throw new ArgumentException("the second run has no flows (Flows = true)", nameof(after))).Where(f => f.Server is not null).GroupBy(f => f.SourcePort).Select(g => g.First()))
        {
            if (!first.TryGetValue(flow.SourcePort, out var was)) continue;
            compared++;
            if (was == flow.Server) continue;
            moved++;
            if (!known.Contains(flow.Server!)) toNew++;
        }
        return (compared, moved, toNew);
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();

    /// <summary>
    /// The command line of meradm. Next to the lab, its dependencies are what the program using the lab
    /// resolved (the daemon brings ASP.NET Core, whose shared framework then provides the logging and
    /// gRPC client libraries instead of files beside it): run it with that program's deps file and the
    /// daemon's runtime config, which name exactly what is there.
    /// </summary>
    public static IReadOnlyList<string> Meradm() => Tool(MeradmDll);

    /// <summary>merlin-agent.dll, copied next to this assembly by the project reference.</summary>
    public static string AgentDll => Beside("merlin-agent.dll");

    /// <summary>The command line of the real-server agent, run like <see cref="Meradm"/>.</summary>
    public static IReadOnlyList<string> Agent() => Tool(AgentDll);

    private static IReadOnlyList<string> Tool(string dll)
    {
        var entry = System.Reflection.Assembly.GetEntryAssembly()?.Location;
        var deps = entry is null ? null : Path.ChangeExtension(entry, ".deps.json");
        return deps is not null && File.Exists(deps) && Path.GetDirectoryName(deps) == Path.GetDirectoryName(dll)
            ? [LabPrograms.Dotnet, "exec", "--depsfile", deps, "--runtimeconfig", Path.ChangeExtension(DaemonDll, ".runtimeconfig.json"), dll]
            : [LabPrograms.Dotnet, dll];
    }

    private static string Beside(string file)
    {
        var path = Path.Combine(Path.GetDirectoryName(typeof(LabMerlin).Assembly.Location) ?? AppContext.BaseDirectory, file);
        return File.Exists(path) ? path : throw new FileNotFoundException($"{file} is not built next to the lab (build tests/Merlin.Lab)", path);
    }

    private static string Int(int n) => n.ToString(CultureInfo.InvariantCulture);
}
