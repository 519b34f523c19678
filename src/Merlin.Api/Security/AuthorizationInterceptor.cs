using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Merlin.Api.Security;

/// <summary>
/// Admits each call before it reaches <see cref="MerlinService"/>, once its body is parsed: the caller (found by
/// <see cref="ApiAdmission"/> before the body was read, or authenticated here when no admission ran) must be
/// allowed this request by <see cref="AccessPolicy"/> — for a real server, the address it names must be its own.
/// A refused call never reaches the service, so it changes nothing.
/// </summary>
public sealed class AuthorizationInterceptor(CallerAuthenticator authenticator, RefusedCalls refusals) : Interceptor
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
        var http = context.GetHttpContext();
        try
        {
            AccessPolicy.Authorize(method, request, ApiAdmission.CallerOf(http) ?? authenticator.Authenticate(context));
        }
        catch (RpcException e)
        {
            refusals.Refused(method, RefusedCalls.Peer(http), e.Status);
            throw;
        }
    }
}
