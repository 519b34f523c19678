using System.Globalization;
using System.Text;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Microsoft.AspNetCore.Http;

namespace Merlin.Api.Security;

/// <summary>
/// The middleware that authenticates every gRPC call and checks its method against the caller's role before
/// the request body is read: Grpc.AspNetCore parses the body before any interceptor runs, so without this a
/// caller with no credentials could still make the daemon parse (and, when malformed, log) what it sent. A
/// refused call is answered here with a trailers-only gRPC response (UNAUTHENTICATED or PERMISSION_DENIED and
/// the reason) and its body is never parsed. What depends on the body (a real server's own address) is
/// checked after parsing by <see cref="AuthorizationInterceptor"/>.
/// </summary>
public sealed class ApiAdmission(RequestDelegate next, CallerAuthenticator authenticator, RefusedCalls refusals)
{
    private static readonly object CallerKey = new();

    /// <summary>The caller this middleware admitted for <paramref name="http"/>'s call; null when it did not run.</summary>
    public static Caller? CallerOf(HttpContext http) => http.Items.TryGetValue(CallerKey, out var caller) ? caller as Caller : null;

    public Task InvokeAsync(HttpContext http)
    {
        if (http.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is not { } grpc) return next(http);
        var method = grpc.Method.Name;
        try
        {
            var caller = authenticator.Authenticate(http);
            AccessPolicy.AuthorizeMethod(method, caller);
            http.Items[CallerKey] = caller;
        }
        catch (RpcException e)
        {
            refusals.Refused(method, RefusedCalls.Peer(http), e.Status);
            Answer(http.Response, e.Status);
            return Task.CompletedTask;
        }
        return next(http);
    }

    /// <summary>A trailers-only response: HTTP 200, the status in the headers, no message.</summary>
    private static void Answer(HttpResponse response, Status status)
    {
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/grpc";
        response.Headers["grpc-status"] = ((int)status.StatusCode).ToString(CultureInfo.InvariantCulture);
        if (status.Detail.Length > 0) response.Headers["grpc-message"] = PercentEncode(status.Detail);
    }

    /// <summary>grpc-message's encoding: UTF-8, with bytes outside printable ASCII and '%' written %XX.</summary>
    private static string PercentEncode(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var b in Encoding.UTF8.GetBytes(text))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%') sb.Append((char)b);
            else sb.Append(CultureInfo.InvariantCulture, $"%{b:X2}");
        }
        return sb.ToString();
    }
}
