using System.Net;
using Grpc.Core;
using Merlin.Contracts;

namespace Merlin.Api.Security;

/// <summary>
/// Which role may call which method. Admin may call anything. A real server may read List and Status, and
/// change only real servers whose IP is one of its own. A method not listed here is admin-only, so a new
/// RPC is never open to real servers by accident; opening one to them is one line naming where its
/// request carries the server's IP (as DrainServer's does).
/// </summary>
public static class AccessPolicy
{
    /// <summary>What a real server may do with one method; <paramref name="ServerIp"/> picks the address a request changes.</summary>
    private sealed record RealServerAccess(Func<object?, string?>? ServerIp)
    {
        public bool ReadOnly => ServerIp is null;
    }

    private static readonly RealServerAccess Read = new(ServerIp: null);

    private static RealServerAccess OwnServer<TRequest>(Func<TRequest, string?> serverIp) =>
        new(request => request is TRequest r ? serverIp(r) : null);

    private static readonly Dictionary<string, RealServerAccess> RealServerMay = new()
    {
        ["CreateServer"] = OwnServer((RealServer r) => r.Key?.Ip),
        ["UpdateServer"] = OwnServer((RealServer r) => r.Key?.Ip),
        ["DeleteServer"] = OwnServer((RealServer r) => r.Key?.Ip),
        ["DrainServer"] = OwnServer((DrainRequest r) => r.Server?.Key?.Ip),
        ["UndrainServer"] = OwnServer((RealServer r) => r.Key?.Ip),
        ["List"] = Read,
        ["ListStream"] = Read,
        ["Status"] = Read,
        // A real server's agent reads its services' tables for second chance.
        ["GetTable"] = Read,
        // Counters stays admin-only: every service's traffic is none of an agent's business, and a
        // read costs the dataplane one dump per service.
    };

    /// <summary>
    /// Throws PermissionDenied unless <paramref name="caller"/>'s role may call <paramref name="method"/> at all;
    /// needs no request, so a call is refused before its body is read. <see cref="Authorize"/> then checks the request.
    /// </summary>
    public static void AuthorizeMethod(string method, Caller caller) => Access(method, caller);

    /// <summary>Throws PermissionDenied, naming why, unless <paramref name="caller"/> may make this call.</summary>
    /// <param name="method">The RPC's name (<c>CreateServer</c>).</param>
    /// <param name="request">The request message; null for streaming calls.</param>
    public static void Authorize(string method, object? request, Caller caller)
    {
        if (Access(method, caller) is not { ReadOnly: false } access) return;
        var text = access.ServerIp!(request);
        if (!IPAddress.TryParse(text, out var address))
            throw Denied($"{caller} may {method} only its own servers, and the request names no server address (key.ip)");
        if (!caller.Addresses.Any(own => Same(own, address)))
            throw Denied($"{caller} may {method} only servers with its own IP ({string.Join(", ", caller.Addresses)}), not {address}");
    }

    /// <summary>What <paramref name="caller"/> may do with <paramref name="method"/>: null for admin (anything).</summary>
    private static RealServerAccess? Access(string method, Caller caller)
    {
        if (caller.Role == Role.Admin) return null;
        return RealServerMay.TryGetValue(method, out var access) ? access : throw Denied($"{caller} may not call {method}: only admin may");
    }

    private static bool Same(IPAddress a, IPAddress b) => Plain(a).Equals(Plain(b));

    private static IPAddress Plain(IPAddress a)
    {
        if (a.IsIPv4MappedToIPv6) return a.MapToIPv4();
        return a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && a.ScopeId != 0 ? new IPAddress(a.GetAddressBytes()) : a;
    }

    private static RpcException Denied(string why) => new(new Status(StatusCode.PermissionDenied, why));
}
