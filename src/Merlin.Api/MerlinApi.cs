using System.Reflection;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Merlin.Api.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Wire = Merlin.Contracts;

namespace Merlin.Api;

/// <summary>
/// How a host serves <see cref="MerlinService"/>: <see cref="ApiAdmission"/> before any body is read, then the
/// service's methods bound with request marshallers that turn a body protobuf cannot parse into
/// INVALID_ARGUMENT (the gRPC spec allows INTERNAL for an undecodable message; we answer INVALID_ARGUMENT
/// because the fault is the caller's bytes, not the daemon — clients and the fuzz suite can then tell the two
/// apart), logged by <see cref="RefusedCalls"/> at Warning at most once per 10 s. Without the marshallers
/// Grpc.AspNetCore answers UNKNOWN ("Exception was thrown by handler") and logs a stack trace at Error per call.
/// </summary>
public static class MerlinApi
{
    /// <summary>Registers what <see cref="MapMerlinApi"/> needs; the host registers <see cref="CallerAuthenticator"/> and gRPC.</summary>
    public static IServiceCollection AddMerlinApi(this IServiceCollection services)
    {
        services.AddHttpContextAccessor();
        services.TryAddSingleton<RefusedCalls>();
        services.TryAddSingleton<FleetSettings>();
        services.TryAddTransient<MerlinService>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<MerlinEndpoint>, GuardedMethods>());
        return services;
    }

    /// <summary>Adds the admission middleware and maps the API's methods.</summary>
    public static WebApplication MapMerlinApi(this WebApplication app)
    {
        app.UseMiddleware<ApiAdmission>();
        app.MapGrpcService<MerlinEndpoint>();
        return app;
    }

    /// <summary>
    /// The service type the API is mapped as: <see cref="MerlinService"/> itself cannot be, because the generated
    /// base class makes Grpc.AspNetCore bind it with the generated marshallers too (two endpoints per method).
    /// </summary>
    public sealed class MerlinEndpoint(MerlinService service)
    {
        internal MerlinService Service => service;
    }

    /// <summary>Binds every method of the contract to <see cref="MerlinService"/>'s, through a guarded request marshaller.</summary>
    private sealed class GuardedMethods(RefusedCalls refusals, IHttpContextAccessor http) : IServiceMethodProvider<MerlinEndpoint>
    {
        public void OnServiceMethodDiscovery(ServiceMethodProviderContext<MerlinEndpoint> context) =>
            Wire.Merlin.BindService(new Binder(context, this), null!);

        private Marshaller<T> Guard<T>(string method, Marshaller<T> inner) where T : class => new(inner.ContextualSerializer, body =>
        {
            try
            {
                return inner.ContextualDeserializer(body);
            }
            catch (Exception e) when (e is not (RpcException or OperationCanceledException))
            {
                // Only the caller's bytes are parsed here: whatever fails is theirs (InvalidProtocolBufferException, mostly).
                refusals.Malformed(method, RefusedCalls.Peer(http.HttpContext), e.Message);
                throw new RpcException(new Status(StatusCode.InvalidArgument, $"the request body is not a valid {typeof(T).Name} message: {e.Message}"));
            }
        });

        private sealed class Binder(ServiceMethodProviderContext<MerlinEndpoint> context, GuardedMethods owner) : ServiceBinderBase
        {
            public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler)
            {
                var implementation = typeof(MerlinService).GetMethod(method.Name, BindingFlags.Public | BindingFlags.Instance, [typeof(TRequest), typeof(ServerCallContext)])
                    ?? throw new InvalidOperationException($"MerlinService has no method {method.Name}({typeof(TRequest).Name}, ServerCallContext)");
                var invoke = implementation.CreateDelegate<Func<MerlinService, TRequest, ServerCallContext, Task<TResponse>>>();
                var guarded = new Method<TRequest, TResponse>(method.Type, method.ServiceName, method.Name,
                    owner.Guard(method.Name, method.RequestMarshaller), method.ResponseMarshaller);
                context.AddUnaryMethod(guarded, [], (endpoint, request, callContext) => invoke(endpoint.Service, request, callContext));
            }

            public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler)
            {
                var implementation = typeof(MerlinService).GetMethod(method.Name, BindingFlags.Public | BindingFlags.Instance, [typeof(TRequest), typeof(IServerStreamWriter<TResponse>), typeof(ServerCallContext)])
                    ?? throw new InvalidOperationException($"MerlinService has no method {method.Name}({typeof(TRequest).Name}, IServerStreamWriter<{typeof(TResponse).Name}>, ServerCallContext)");
                var invoke = implementation.CreateDelegate<Func<MerlinService, TRequest, IServerStreamWriter<TResponse>, ServerCallContext, Task>>();
                var guarded = new Method<TRequest, TResponse>(method.Type, method.ServiceName, method.Name,
                    owner.Guard(method.Name, method.RequestMarshaller), method.ResponseMarshaller);
                context.AddServerStreamingMethod(guarded, [], (endpoint, request, stream, callContext) => invoke(endpoint.Service, request, stream, callContext));
            }
        }
    }
}
