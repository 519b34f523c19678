using System.Text.Json;
using System.Text.Json.Serialization;

namespace Merlin.Lab.Server;

/// <summary>
/// What <c>client http</c> and <c>client udp</c> print (one JSON object on stdout): each request is a new
/// connection (a new flow), so per-server counts show how flows were spread.
/// </summary>
public sealed class RequestReport
{
    public string Mode { get; set; } = "";
    public string Target { get; set; } = "";
    /// <summary>Requests asked for with --count.</summary>
    public int Requested { get; set; }
    /// <summary>Requests that ran (fewer than Requested when --duration or a signal ended the loop).</summary>
    public int Completed { get; set; }
    /// <summary>HTTP 2xx (http) or an echoed reply (udp).</summary>
    public int Successes { get; set; }
    public int Failures { get; set; }
    /// <summary>Successful requests per answering server (the X-Server header / the echo's first word).</summary>
    public SortedDictionary<string, int> PerServer { get; set; } = new(StringComparer.Ordinal);
    /// <summary>HTTP status codes seen (http only).</summary>
    public SortedDictionary<string, int> StatusCodes { get; set; } = new(StringComparer.Ordinal);
    /// <summary>Failures by kind: timeout, ConnectionRefused, ConnectionReset, status-503, …</summary>
    public SortedDictionary<string, int> Errors { get; set; } = new(StringComparer.Ordinal);
    /// <summary>The first 50 failures, with when they happened (ms since the loop started).</summary>
    public List<FailureRecord> FirstFailures { get; set; } = [];
    public long ElapsedMs { get; set; }
    public double MeanLatencyMs { get; set; }
    public double MaxLatencyMs { get; set; }
    /// <summary>Latency percentiles of the successful requests (nearest rank; 0 when none succeeded).</summary>
    public double P50LatencyMs { get; set; }
    public double P90LatencyMs { get; set; }
    public double P99LatencyMs { get; set; }
    /// <summary>True when --duration or SIGTERM/SIGINT ended the loop before --count requests.</summary>
    public bool StoppedEarly { get; set; }
    /// <summary>Every request's flow and outcome (only with --flows).</summary>
    public List<FlowRecord>? Flows { get; set; }
}

public sealed record FailureRecord(int Request, long AtMs, string Error);

public sealed record FlowRecord(int Request, int SourcePort, string? Server, int Status, string? Error);

/// <summary>What <c>client hold</c> prints: long-lived echo connections and whether each survived.</summary>
public sealed class HoldReport
{
    public string Mode { get; set; } = "hold";
    public string Target { get; set; } = "";
    /// <summary>Connections asked for with --connections.</summary>
    public int Requested { get; set; }
    /// <summary>Connections that opened (and, with --only, landed on that server).</summary>
    public int Opened { get; set; }
    /// <summary>Connect attempts made while opening (more than Opened with --only or on errors).</summary>
    public int Attempts { get; set; }
    /// <summary>Opened connections that answered every exchange until the end.</summary>
    public int Survived { get; set; }
    /// <summary>Requested − Survived.</summary>
    public int Failed { get; set; }
    /// <summary>Exchanges (message + reply) completed over all connections.</summary>
    public long Exchanges { get; set; }
    /// <summary>Opened connections per server that answered their first message.</summary>
    public SortedDictionary<string, int> PerServer { get; set; } = new(StringComparer.Ordinal);
    /// <summary>Time spent opening connections.</summary>
    public long OpenMs { get; set; }
    /// <summary>Time spent exchanging messages after all connections were open.</summary>
    public long HoldMs { get; set; }
    public bool StoppedEarly { get; set; }
    public List<string> OpenErrors { get; set; } = [];
    public List<HoldConnection> Connections { get; set; } = [];
}

public sealed class HoldConnection
{
    public int Id { get; set; }
    public int LocalPort { get; set; }
    public string Server { get; set; } = "";
    public long Exchanges { get; set; }
    public bool Survived { get; set; }
    public string? Error { get; set; }
    /// <summary>When it failed, ms since holding started (after all were open).</summary>
    public long? FailedAtMs { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = false,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(RequestReport))]
[JsonSerializable(typeof(HoldReport))]
public sealed partial class ReportJson : JsonSerializerContext
{
    public static string Write(RequestReport r) => JsonSerializer.Serialize(r, Default.RequestReport);
    public static string Write(HoldReport r) => JsonSerializer.Serialize(r, Default.HoldReport);
    public static RequestReport ReadRequest(string json) => JsonSerializer.Deserialize(json, Default.RequestReport) ?? throw new JsonException("empty report");
    public static HoldReport ReadHold(string json) => JsonSerializer.Deserialize(json, Default.HoldReport) ?? throw new JsonException("empty report");
}
