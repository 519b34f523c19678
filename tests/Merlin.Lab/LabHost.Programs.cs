using System.Globalization;
using System.Net;
using Merlin.Lab.Server;

namespace Merlin.Lab;

public sealed partial class LabHost
{
    /// <summary>
    /// Starts the lab server here (HTTP, TCP echo and UDP echo, answering with <see cref="LabServerOptions.Name"/>,
    /// default this host's name) and waits until it listens. It stops when the handle or the lab is disposed,
    /// after its lifetime, or when the test process dies.
    /// </summary>
    public async Task<LabProcess> StartServerAsync(LabServerOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new LabServerOptions();
        var argv = LabPrograms.Server(
            "serve", "--name", o.Name ?? Name,
            "--http", I(o.HttpPort), "--echo", I(o.EchoPort), "--udp", I(o.UdpPort),
            "--lifetime", LabPrograms.Ms(o.Lifetime), "--echo-idle", LabPrograms.Ms(o.EchoIdle),
            "--health-file", HealthFile, "--exit-on-stdin-eof");
        var process = Start(argv);
        try
        {
            await process.WaitForLineAsync(l => l.StartsWith("READY ", StringComparison.Ordinal), TimeSpan.FromSeconds(20), 0, ct);
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
        return process;
    }

    /// <summary>While false, this host's lab server answers <c>GET /healthz</c> with 503 (its other answers are unchanged).</summary>
    public void SetHealthy(bool healthy)
    {
        if (healthy) File.Delete(HealthFile);
        else File.WriteAllText(HealthFile, "unhealthy\n");
    }

    /// <summary>The file whose existence makes this host's lab server report itself unhealthy.</summary>
    public string HealthFile => Path.Combine(Lab.TempPath, $"{Name}.unhealthy");

    /// <summary>Runs <c>client http</c> from this host: <see cref="LabRequestOptions.Count"/> requests to
    /// <paramref name="target"/>, each on a new connection, and returns the report.</summary>
    public Task<RequestReport> HttpAsync(IPEndPoint target, LabRequestOptions? options = null, CancellationToken ct = default) =>
        RequestAsync("http", target, options ?? new LabRequestOptions(), ct);

    /// <summary>Runs <c>client udp</c> from this host (a new socket, so a new flow, per request).</summary>
    public Task<RequestReport> UdpAsync(IPEndPoint target, LabRequestOptions? options = null, CancellationToken ct = default) =>
        RequestAsync("udp", target, options ?? new LabRequestOptions(), ct);

    /// <summary>Starts <c>client http</c> in the background (e.g. a loop that runs while servers restart).</summary>
    public LabClientRun<RequestReport> StartHttp(IPEndPoint target, LabRequestOptions? options = null)
    {
        var o = options ?? new LabRequestOptions();
        return new LabClientRun<RequestReport>(Start(RequestArgs("http", target, o)), ReportJson.ReadRequest, RequestBound(o));
    }

    /// <summary>Runs <c>client hold</c> to the end: long-lived echo connections and whether each survived.</summary>
    public async Task<HoldReport> HoldAsync(IPEndPoint target, LabHoldOptions? options = null, CancellationToken ct = default)
    {
        await using var run = StartHold(target, options);
        return await run.ReportAsync(ct);
    }

    /// <summary>Starts <c>client hold</c> in the background: wait with <see cref="LabClientRun{T}.WaitConnectedAsync"/>,
    /// act (drain, move the VIP, …), then collect <see cref="LabClientRun{T}.ReportAsync"/>.</summary>
    public LabClientRun<HoldReport> StartHold(IPEndPoint target, LabHoldOptions? options = null)
    {
        var o = options ?? new LabHoldOptions();
        var args = new List<string>
        {
            "client", "hold", "--target", LabPrograms.Target(target), "--connections", I(o.Connections),
            "--interval", LabPrograms.Ms(o.Interval), "--duration", LabPrograms.Ms(o.Duration), "--timeout", LabPrograms.Ms(o.Timeout),
        };
        if (o.Only is not null) args.AddRange(["--only", o.Only]);
        if (o.MaxAttempts is { } m) args.AddRange(["--max-attempts", I(m)]);
        // Opening is bounded by Duration too; then holding takes Duration; plus start-up and slack.
        var bound = o.Duration * 2 + o.Timeout * 2 + TimeSpan.FromSeconds(30);
        return new LabClientRun<HoldReport>(Start(LabPrograms.Server([.. args])), ReportJson.ReadHold, bound);
    }

    private async Task<RequestReport> RequestAsync(string mode, IPEndPoint target, LabRequestOptions o, CancellationToken ct)
    {
        var r = await RunAsync(RequestArgs(mode, target, o), RequestBound(o), null, ct);
        var json = r.StandardOutput.Split('\n').LastOrDefault(l => l.StartsWith('{'));
        if (!r.Succeeded || json is null) throw new LabCommandException(r);
        return ReportJson.ReadRequest(json);
    }

    private static IReadOnlyList<string> RequestArgs(string mode, IPEndPoint target, LabRequestOptions o)
    {
        var args = new List<string>
        {
            "client", mode, "--target", LabPrograms.Target(target), "--count", I(o.Count), "--timeout", LabPrograms.Ms(o.Timeout),
            "--concurrency", I(o.Concurrency),
        };
        if (o.Duration is { } d) args.AddRange(["--duration", LabPrograms.Ms(d)]);
        if (o.Interval > TimeSpan.Zero) args.AddRange(["--interval", LabPrograms.Ms(o.Interval)]);
        if (mode == "http" && o.Path != "/") args.AddRange(["--path", o.Path]);
        if (o.SourcePorts is { } p) args.AddRange(["--source-ports", $"{p.First}-{p.Last}"]);
        if (o.Flows) args.Add("--flows");
        return LabPrograms.Server([.. args]);
    }

    private static TimeSpan RequestBound(LabRequestOptions o) => (o.Duration ?? TimeSpan.FromMinutes(2)) + o.Timeout + TimeSpan.FromSeconds(30);

    private static string I(int n) => n.ToString(CultureInfo.InvariantCulture);
}
