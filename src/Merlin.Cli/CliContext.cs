using System.CommandLine;
using System.CommandLine.Parsing;
using System.Net.Sockets;
using Grpc.Core;
using Merlin.Cli.Parsing;
using Merlin.Client;
using Merlin.Model;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Cli;

/// <summary>What every command needs: where to write, how to reach the daemon, and one way to report failure.</summary>
internal sealed class CliContext(TextWriter stdout, TextWriter stderr, MerlinClientFactory? clientFactory)
{
    public const int Ok = 0;
    public const int Failed = 1;
    public const int Usage = 2;

    public TextWriter Out { get; } = stdout;
    public TextWriter Error { get; } = stderr;
    public GlobalOptions Global { get; } = new();

    public OutputFormat Output(ParseResult result) =>
        result.IsGiven(Global.Output) ? result.GetValue(Global.Output) : OutputFormat.Table;

    public int UsageError(string message)
    {
        Error.WriteLine($"meradm: {message}");
        return Usage;
    }

    /// <summary>
    /// Runs one RPC against the daemon with the <c>--timeout</c> deadline. A failure is printed as
    /// <c>meradm: &lt;what&gt;: &lt;reason&gt;</c> and gives exit code 1.
    /// </summary>
    public async Task<int> CallAsync(ParseResult result, string what, Func<MerlinClient, CallOptions, Task> call, CancellationToken ct)
    {
        var connection = Global.Resolve(result, out var error);
        if (error is not null) return UsageError(error);
        try
        {
            var options = new CallOptions(GrpcConnection.Headers(connection), DateTime.UtcNow + connection.Timeout, ct);
            if (clientFactory is not null)
            {
                await call(clientFactory(connection), options);
            }
            else
            {
                using var channel = GrpcConnection.CreateChannel(connection);
                await call(new MerlinClient(channel), options);
            }
            return Ok;
        }
        catch (RpcException e)
        {
            Error.WriteLine($"meradm: {what}: {Describe(e, connection)}");
            return Failed;
        }
        catch (ConnectionSetupException e)
        {
            return UsageError(e.Message);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            Error.WriteLine($"meradm: {what}: interrupted");
            return Failed;
        }
    }

    /// <summary>The server's own words where it gave some (they name the field); otherwise what went wrong on the way.</summary>
    internal static string Describe(RpcException e, ConnectionOptions connection)
    {
        var status = e.Status;
        if (Find<System.Security.Authentication.AuthenticationException>(status.DebugException) is { } tls)
            return $"cannot reach merlin at {connection.Authority}: TLS failed: {Innermost(tls)}" +
                   (connection.Tls?.CaFile is null
                       ? " (give --ca with the CA that issued the daemon's certificate)"
                       : " (was the daemon's certificate issued by the --ca CA, for the name or address in --host?)");
        // A transport failure carries the client-side exception; a status the daemon sent does not.
        if (status.StatusCode == StatusCode.Unavailable && status.DebugException is { } transport)
            return $"cannot reach merlin at {connection.Authority}: {Innermost(transport)}" +
                   // A TLS listener closes a plain HTTP/2 connection without a word.
                   (connection.Tls is null && connection.UnixSocket is null && Find<HttpIOException>(transport, io => io.HttpRequestError == HttpRequestError.ResponseEnded) is not null
                       ? " (if the daemon serves TLS, give --ca, or --host https://…)"
                       : "");
        if (status.StatusCode == StatusCode.DeadlineExceeded)
            return $"no answer from merlin at {connection.Authority} within {Durations.Format(connection.Timeout)}" +
                   (string.IsNullOrEmpty(status.Detail) || status.Detail == "Deadline Exceeded" ? "" : $" ({status.Detail})");
        if (status.StatusCode == StatusCode.Cancelled && status.DebugException is OperationCanceledException)
            return "interrupted";
        // grpc-dotnet's words for an HTTP answer that is not gRPC (a web server, a proxy, a wrong port).
        if (status.Detail.StartsWith("Bad gRPC response", StringComparison.Ordinal))
            return $"{connection.Authority} did not answer as merlin's gRPC API: {status.Detail}";
        var detail = string.IsNullOrWhiteSpace(status.Detail) ? Words(status.StatusCode) : status.Detail;
        if (status.StatusCode == StatusCode.Unimplemented)
            detail += $" (the daemon at {connection.Authority} does not offer this call; is it an older merlin?)";
        return detail;
    }

    private static T? Find<T>(Exception? e, Func<T, bool>? where = null) where T : Exception
    {
        for (; e is not null; e = e.InnerException)
            if (e is T found && (where is null || where(found))) return found;
        return null;
    }

    private static string Innermost(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e switch
        {
            SocketException s => s.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => "connection refused",
                SocketError.HostNotFound or SocketError.NoData => "host not found",
                SocketError.TimedOut => "connection timed out",
                SocketError.NetworkUnreachable or SocketError.HostUnreachable => "no route to host",
                _ => s.Message,
            },
            _ => e.Message,
        };
    }

    private static string Words(StatusCode code) => code switch
    {
        StatusCode.InvalidArgument => "invalid argument",
        StatusCode.NotFound => "not found",
        StatusCode.AlreadyExists => "already exists",
        StatusCode.FailedPrecondition => "failed precondition",
        StatusCode.PermissionDenied => "permission denied",
        StatusCode.Unauthenticated => "not authenticated",
        StatusCode.Unavailable => "unavailable",
        _ => code.ToString(),
    };
}
