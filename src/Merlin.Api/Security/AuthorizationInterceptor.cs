using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.Logging;

namespace Merlin.Api.Security;

/// <summary>
/// Admits each call before it reaches <see cref="MerlinService"/>: authenticates the caller, then asks
/// <see cref="AccessPolicy"/>. A refused call never reaches the service, so it changes nothing.
/// </summary>
public sealed partial class AuthorizationInterceptor(CallerAuthenticator authenticator, ILogger<AuthorizationInterceptor> logger) : Interceptor
{
    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context, request);
        return continuation(request, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context, request: null);
        return continuation(requestStream, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context, request);
        return continuation(request, responseStream, context);
    }

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context, request: null);
        return continuation(requestStream, responseStream, context);
    }

    private void Admit(ServerCallContext context, object? request)
    {
        // "/types.Merlin/CreateServer" → "CreateServer"
        var method = context.Method[(context.Method.LastIndexOf('/') + 1)..];
        try
        {
            AccessPolicy.Authorize(method, request, authenticator.Authenticate(context));
        }
        catch (RpcException e)
        {
            LogRefused(method, context.Peer, e.StatusCode, e.Status.Detail);
            throw;
        }
    }

    [LoggerMessage(EventId = 220, Level = LogLevel.Warning, Message = "Refused {Method} from {Peer}: {Code}: {Reason}")]
    private partial void LogRefused(string method, string peer, StatusCode code, string reason);
}
