using Grpc.Core;
using Microsoft.AspNetCore.Http;

namespace Merlin.Api.Security;

/// <summary>The credentials the API accepts on TCP; the daemon fills it from its flags.</summary>
public sealed class ApiCredentials
{
    /// <summary>Client certificates issued by this CA identify callers (<c>--tls-client-ca</c>).</summary>
    public ClientCertificateAuthority? ClientCertificates { get; init; }

    /// <summary>Bearer tokens identify callers (<c>--tokens-file</c>).</summary>
    public BearerTokens? Tokens { get; init; }

    /// <summary>With neither, TCP callers are admin: the API is then only on loopback, or the operator said --allow-insecure.</summary>
    public bool Required => ClientCertificates is not null || Tokens is not null;
}

/// <summary>
/// Establishes who is calling. In order: a call on the local Unix socket is admin (the socket file's
/// permissions decide who can connect); a client certificate must be valid for <see
/// cref="ApiCredentials.ClientCertificates"/>; otherwise an <c>authorization: Bearer</c> token must be
/// in <see cref="ApiCredentials.Tokens"/>; a call with none is admin only when the API requires no
/// credentials. Everything else is Unauthenticated, with the reason.
/// </summary>
public sealed class CallerAuthenticator(ApiCredentials credentials)
{
    private const string BearerPrefix = "Bearer ";

    public Caller Authenticate(ServerCallContext context) => Authenticate(context.GetHttpContext());

    /// <summary>From the connection and the request's headers alone, so a call can be refused before its body is read.</summary>
    public Caller Authenticate(HttpContext http)
    {
        // A connection that is not over IP came through the daemon's Unix socket, its only other listener.
        // (Connection-level features such as the endpoint are not visible from a request.)
        if (http.Connection.LocalIpAddress is null && http.Connection.RemoteIpAddress is null) return Caller.LocalSocket;

        if (http.Connection.ClientCertificate is { } certificate)
            return credentials.ClientCertificates?.Identify(certificate)
                ?? throw Unauthenticated("this daemon takes no client certificates (it has no --tls-client-ca)");

        if (http.Request.Headers.Authorization.ToString() is { Length: > 0 } authorization)
        {
            if (!authorization.StartsWith(BearerPrefix, StringComparison.OrdinalIgnoreCase))
                throw Unauthenticated("the authorization header is not \"Bearer <token>\"");
            if (credentials.Tokens is null)
                throw Unauthenticated("this daemon takes no bearer tokens (it has no --tokens-file)");
            return credentials.Tokens.Find(authorization[BearerPrefix.Length..].Trim())
                ?? throw Unauthenticated("the bearer token is not in the daemon's tokens file");
        }

        if (!credentials.Required) return Caller.Anonymous;
        throw Unauthenticated($"no credentials: this API requires {Accepted()}");
    }

    private string Accepted() => (credentials.ClientCertificates, credentials.Tokens) switch
    {
        (not null, not null) => "a client certificate or a bearer token",
        (not null, null) => "a client certificate",
        _ => "a bearer token (authorization: Bearer <token>)",
    };

    private static RpcException Unauthenticated(string why) => new(new Status(StatusCode.Unauthenticated, why));
}
