using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using Merlin.Lab.Server;

namespace Merlin.Lab;

/// <summary>How <see cref="LabHost.StartServerAsync"/> runs the lab server. A port of 0 turns that server off.</summary>
public sealed record LabServerOptions
{
    /// <summary>Name the server answers with; default: the host's name (rs1, rs2, …).</summary>
    public string? Name { get; init; }

    public int HttpPort { get; init; } = Lab.HttpPort;
    public int EchoPort { get; init; } = Lab.EchoPort;
    public int UdpPort { get; init; } = Lab.UdpPort;

    /// <summary>The server exits by itself after this long.</summary>
    public TimeSpan Lifetime { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>Echo connections idle this long are closed by the server.</summary>
    public TimeSpan EchoIdle { get; init; } = TimeSpan.FromMinutes(5);
}

/// <summary>Options of <c>client http</c> / <c>client udp</c> (see <see cref="LabHost.HttpAsync"/>).</summary>
public sealed record LabRequestOptions
{
    public int Count { get; init; } = 100;
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Upper bound on the whole loop (default 2 minutes).</summary>
    public TimeSpan? Duration { get; init; }
    public TimeSpan Interval { get; init; } = TimeSpan.Zero;
    public int Concurrency { get; init; } = 1;
    /// <summary>HTTP path (http only).</summary>
    public string Path { get; init; } = "/";
    /// <summary>Bind request i to port First + i mod (Last − First + 1), so a later run replays the same flows.</summary>
    public (int First, int Last)? SourcePorts { get; init; }
    /// <summary>Report every request's source port and server in <see cref="RequestReport.Flows"/>.</summary>
    public bool Flows { get; init; }
}

/// <summary>Options of <c>client hold</c> (see <see cref="LabHost.HoldAsync"/>).</summary>
public sealed record LabHoldOptions
{
    public int Connections { get; init; } = 20;
    public TimeSpan Interval { get; init; } = TimeSpan.FromMilliseconds(200);
    /// <summary>How long to hold once all connections are open.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Keep only connections answered by this server (others are closed and retried).</summary>
    public string? Only { get; init; }
    public int? MaxAttempts { get; init; }
}

/// <summary>A client loop running in the background; <see cref="ReportAsync"/> waits for its JSON report.</summary>
public sealed class LabClientRun<TReport> : IAsyncDisposable where TReport : class
{
    private readonly Func<string, TReport> _parse;
    private readonly TimeSpan _bound;

    internal LabClientRun(LabProcess process, Func<string, TReport> parse, TimeSpan bound)
    {
        Process = process;
        _parse = parse;
        _bound = bound;
    }

    public LabProcess Process { get; }

    /// <summary>For <c>client hold</c>: waits until every connection is open (the "connected N" line) and returns N.</summary>
    public async Task<int> WaitConnectedAsync(TimeSpan? timeout = null, CancellationToken ct = default)
    {
        var line = await Process.WaitForLineAsync(l => l.StartsWith("connected ", StringComparison.Ordinal), timeout ?? TimeSpan.FromSeconds(30), 0, ct);
        return int.Parse(line["connected ".Length..], CultureInfo.InvariantCulture);
    }

    /// <summary>Waits for the loop to end by itself and returns its report.</summary>
    public async Task<TReport> ReportAsync(CancellationToken ct = default)
    {
        var code = await Process.WaitForExitAsync(_bound, ct);
        return Parse(code);
    }

    /// <summary>Ends the loop early (SIGTERM: it stops and still prints its report) and returns the report.</summary>
    public async Task<TReport> StopAsync(CancellationToken ct = default)
    {
        Process.SendSignal(Signal.Term);
        var code = await Process.WaitForExitAsync(TimeSpan.FromSeconds(30), ct);
        return Parse(code);
    }

    private TReport Parse(int code)
    {
        var json = Process.StandardOutput.Split('\n').LastOrDefault(l => l.StartsWith('{'));
        if (code != 0 || json is null) throw new InvalidOperationException($"{Process} exited with code {code} without a report\n{LabCommandResult.Tail(Process.Output)}");
        return _parse(json);
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>Where the lab server program is and how to start it.</summary>
public static class LabPrograms
{
    /// <summary>Merlin.Lab.Server.dll, copied next to this assembly by the project reference.</summary>
    public static string ServerDll
    {
        get
        {
            var dll = typeof(Merlin.Lab.Server.Program).Assembly.Location;
            if (string.IsNullOrEmpty(dll)) dll = Path.Combine(AppContext.BaseDirectory, "Merlin.Lab.Server.dll");
            if (!File.Exists(Path.ChangeExtension(dll, ".runtimeconfig.json")))
                throw new FileNotFoundException($"the lab server is not built next to {dll} (build tests/Merlin.Lab.Server)", dll);
            return dll;
        }
    }

    /// <summary>The dotnet host that runs this process (so the lab server runs on the same runtime).</summary>
    public static string Dotnet
    {
        get
        {
            // .../dotnet/shared/Microsoft.NETCore.App/10.0.x/ → .../dotnet/dotnet
            var root = Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
            var candidate = Path.Combine(root, "dotnet");
            if (File.Exists(candidate)) return candidate;
            return Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)
                ? host
                : Merlin.Testing.Requires.FindOnPath("dotnet") ?? throw new FileNotFoundException("no dotnet host found");
        }
    }

    /// <summary><c>dotnet Merlin.Lab.Server.dll ARGS…</c>: to run the lab server program with any arguments.</summary>
    public static IReadOnlyList<string> Server(params string[] args) => [Dotnet, ServerDll, .. args];

    internal static string Ms(TimeSpan t) => $"{Math.Max(0, (long)Math.Ceiling(t.TotalMilliseconds))}ms";

    internal static string Target(IPEndPoint ep) => ep.ToString();
}
