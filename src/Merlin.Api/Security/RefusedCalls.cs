using Grpc.Core;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Merlin.Api.Security;

/// <summary>
/// The log of calls refused before they reach <see cref="MerlinService"/> (unauthenticated, not permitted,
/// malformed): any caller can cause them at will, so each kind is logged at Warning at most once per 10 s with
/// a count of the lines left out, and never with a stack trace.
/// </summary>
public sealed partial class RefusedCalls(TimeProvider time, ILogger<RefusedCalls> logger)
{
    private readonly RateLimitedLog _refused = new(time, RateLimitedLog.DefaultInterval);
    private readonly RateLimitedLog _malformed = new(time, RateLimitedLog.DefaultInterval);

    /// <summary>A call refused by authentication or authorization.</summary>
    public void Refused(string method, string peer, Status status)
    {
        if (_refused.TryEnter(out var suppressed)) LogRefused(method, peer, status.StatusCode, status.Detail, suppressed);
    }

    /// <summary>A call whose body protobuf could not parse.</summary>
    public void Malformed(string method, string peer, string reason)
    {
        if (_malformed.TryEnter(out var suppressed)) LogMalformed(method, peer, reason, suppressed);
    }

    /// <summary><c>198.18.1.21:40122</c>, or the local Unix socket.</summary>
    public static string Peer(HttpContext? http) => http?.Connection.RemoteIpAddress is { } ip
        ? Merlin.Model.Endpoints.Format(ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip, (ushort)http.Connection.RemotePort)
        : http is null ? "an unknown peer" : "the local Unix socket";

    [LoggerMessage(EventId = 220, Level = LogLevel.Warning,
        Message = "Refused {Method} from {Peer}: {Code}: {Reason} ({Suppressed} more refusals since the last such line; at most one line per 10 s)")]
    private partial void LogRefused(string method, string peer, StatusCode code, string reason, long suppressed);

    [LoggerMessage(EventId = 225, Level = LogLevel.Warning,
        Message = "Refused a malformed {Method} request from {Peer}: INVALID_ARGUMENT: {Reason} ({Suppressed} more malformed requests since the last such line; at most one line per 10 s)")]
    private partial void LogMalformed(string method, string peer, string reason, long suppressed);
}
