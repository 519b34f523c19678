using Merlin.Model;
using Merlin.Linux;
using K = Merlin.Ipvs.IpvsKernel;

namespace Merlin.Ipvs;

/// <summary>
/// The kernel's IPVS table over generic netlink. Calls are synchronous: the kernel carries out a request
/// inside the send, so a call costs one send and one receive and never waits longer than the socket's
/// timeout. Changes in bulk go through <see cref="CreateBatch"/> and <see cref="Execute"/>. Refusals raise
/// <see cref="NetlinkException"/> with the errno (EEXIST, ESRCH for a missing service, ENOENT for a missing
/// destination, EPERM without CAP_NET_ADMIN, …) and the request. Thread-safe.
/// </summary>
public sealed class IpvsClient : IDisposable
{
    private readonly NetlinkClient _netlink;
    private readonly ushort _family;

    private IpvsClient(NetlinkClient netlink, GenericNetlinkFamily family)
    {
        _netlink = netlink;
        Family = family;
        _family = family.Id;
    }

    /// <summary>The IPVS family as the generic-netlink controller described it.</summary>
    public GenericNetlinkFamily Family { get; }

    /// <summary>The underlying netlink client (its counters: stale replies, socket resets).</summary>
    public NetlinkClient Netlink => _netlink;

    /// <summary>
    /// Opens a generic-netlink socket and resolves the "IPVS" family. A kernel without IPVS (module not
    /// loaded or not built) raises <see cref="NetlinkException"/> with <see cref="Errno.ENOENT"/>.
    /// </summary>
    public static IpvsClient Open(NetlinkSocketOptions? options = null) =>
        Open(NetlinkClient.Open(Merlin.Linux.Netlink.ProtocolGeneric, options));

    /// <summary>Resolves the "IPVS" family over <paramref name="netlink"/>, which the client then owns.</summary>
    public static IpvsClient Open(NetlinkClient netlink)
    {
        try
        {
            return new IpvsClient(netlink, GenericNetlinkFamily.Resolve(netlink, K.FamilyName));
        }
        catch
        {
            netlink.Dispose();
            throw;
        }
    }

    /// <summary>Whether this kernel has IPVS (the controller knows the family); for <c>--dataplane auto</c>.</summary>
    public static bool IsAvailable(string? networkNamespace = null)
    {
        try
        {
            using var client = Open(new NetlinkSocketOptions { NetworkNamespace = networkNamespace });
            return true;
        }
        catch (NetlinkException e) when (e.Errno == Errno.ENOENT)
        {
            return false;
        }
    }

    // ---- general -----------------------------------------------------------------------------------

    public IpvsInfo GetInfo()
    {
        using var request = new NetlinkBuffer(32);
        IpvsCodec.WriteCommand(request, _family, K.CmdGetInfo);
        var result = new IpvsInfo?[1];
        _netlink.Execute(request, "IPVS GET_INFO", static (m, r) => r[0] = IpvsCodec.DecodeInfo(m), result);
        return result[0] ?? throw new NetlinkDecodeException("IPVS acknowledged GET_INFO without an answer");
    }

    public IpvsTimeouts GetTimeouts()
    {
        using var request = new NetlinkBuffer(32);
        IpvsCodec.WriteCommand(request, _family, K.CmdGetConfig);
        var result = new IpvsTimeouts?[1];
        _netlink.Execute(request, "IPVS GET_CONFIG", static (m, r) => r[0] = IpvsCodec.DecodeTimeouts(m), result);
        return result[0] ?? throw new NetlinkDecodeException("IPVS acknowledged GET_CONFIG without an answer");
    }

    /// <summary>Sets the TCP, TCP FIN and UDP timeouts; a zero leaves that one unchanged.</summary>
    public void SetTimeouts(IpvsTimeouts timeouts)
    {
        using var request = new NetlinkBuffer(64);
        IpvsCodec.WriteSetTimeouts(request, _family, timeouts);
        _netlink.Execute(request, $"IPVS SET_CONFIG tcp {timeouts.Tcp.TotalSeconds}s tcpfin {timeouts.TcpFin.TotalSeconds}s udp {timeouts.Udp.TotalSeconds}s");
    }

    /// <summary>Deletes every service and destination (in this network namespace).</summary>
    public void Flush()
    {
        using var request = new NetlinkBuffer(32);
        IpvsCodec.WriteCommand(request, _family, K.CmdFlush);
        _netlink.Execute(request, "IPVS FLUSH");
    }

    /// <summary>Zeroes the counters of one service and its destinations, or of everything.</summary>
    public void ZeroCounters(ServiceKey? service = null)
    {
        using var request = new NetlinkBuffer(64);
        if (service is { } key) IpvsCodec.WriteServiceKeyCommand(request, _family, K.CmdZero, key);
        else IpvsCodec.WriteCommand(request, _family, K.CmdZero);
        _netlink.Execute(request, service is { } s ? Describe(K.CmdZero, s) : "IPVS ZERO");
    }

    // ---- services ----------------------------------------------------------------------------------

    public void NewService(ServiceKey key, ServiceConfig config) => ServiceCommand(K.CmdNewService, key, config);

    public void SetService(ServiceKey key, ServiceConfig config) => ServiceCommand(K.CmdSetService, key, config);

    public void DeleteService(ServiceKey key)
    {
        using var request = new NetlinkBuffer(64);
        IpvsCodec.WriteServiceKeyCommand(request, _family, K.CmdDelService, key);
        _netlink.Execute(request, Describe(K.CmdDelService, key));
    }

    /// <summary>One service, or null if the kernel has none with this key.</summary>
    public IpvsService? GetService(ServiceKey key)
    {
        using var request = new NetlinkBuffer(64);
        IpvsCodec.WriteServiceKeyCommand(request, _family, K.CmdGetService, key);
        var result = new IpvsService?[1];
        try
        {
            _netlink.Execute(request, Describe(K.CmdGetService, key), static (m, r) => r[0] = IpvsCodec.DecodeServiceMessage(m), result);
        }
        catch (NetlinkException e) when (e.Errno == Errno.ESRCH)
        {
            return null;
        }
        return result[0];
    }

    /// <summary>Every service (a dump).</summary>
    public IReadOnlyList<IpvsService> GetServices(CancellationToken ct = default)
    {
        using var request = new NetlinkBuffer(32);
        IpvsCodec.WriteCommand(request, _family, K.CmdGetService);
        var services = new List<IpvsService>();
        _netlink.Dump(request, "IPVS GET_SERVICE (dump)", static (m, list) => list.Add(IpvsCodec.DecodeServiceMessage(m)), services, ct);
        return services;
    }

    // ---- destinations ------------------------------------------------------------------------------

    public void NewDestination(ServiceKey service, RealServerKey server, RealServerConfig config) =>
        DestinationCommand(K.CmdNewDest, service, server, config);

    public void SetDestination(ServiceKey service, RealServerKey server, RealServerConfig config) =>
        DestinationCommand(K.CmdSetDest, service, server, config);

    public void DeleteDestination(ServiceKey service, RealServerKey server) =>
        DestinationCommand(K.CmdDelDest, service, server, null);

    /// <summary>The destinations of one service (a dump); empty if the service does not exist.</summary>
    public IReadOnlyList<IpvsDestination> GetDestinations(ServiceKey service, CancellationToken ct = default)
    {
        using var request = new NetlinkBuffer(64);
        IpvsCodec.WriteServiceKeyCommand(request, _family, K.CmdGetDest, service);
        var state = (Family: service.Family, List: new List<IpvsDestination>());
        _netlink.Dump(request, Describe(K.CmdGetDest, service) + " (dump)",
            static (m, s) => s.List.Add(IpvsCodec.DecodeDestinationMessage(m, s.Family)), state, ct);
        return state.List;
    }

    // ---- batches -----------------------------------------------------------------------------------

    /// <summary>An empty batch for this kernel's IPVS family; <paramref name="capacity"/> sizes its buffer.</summary>
    public IpvsBatch CreateBatch(int capacity = 64) => new(_family, capacity);

    /// <summary>
    /// Sends every request of <paramref name="batch"/>, many per datagram, and waits for them all. Returns
    /// which failed (by position in the batch) instead of stopping at the first. Raises only if the outcome
    /// is unknown: a timeout, or replies dropped because the receive buffer overflowed (ENOBUFS).
    /// </summary>
    public NetlinkBatchResult Execute(IpvsBatch batch, NetlinkBatchOptions? options = null, CancellationToken ct = default)
    {
        if (batch.Count == 0) return new NetlinkBatchResult(0, 0, []);
        return _netlink.ExecuteBatch(batch.Buffer, batch.Describe, options, ct);
    }

    public void Dispose() => _netlink.Dispose();

    private void ServiceCommand(byte command, ServiceKey key, ServiceConfig config)
    {
        using var request = new NetlinkBuffer(128);
        IpvsCodec.WriteService(request, _family, command, key, config);
        _netlink.Execute(request, Describe(command, key));
    }

    private void DestinationCommand(byte command, ServiceKey service, RealServerKey server, RealServerConfig? config)
    {
        using var request = new NetlinkBuffer(160);
        IpvsCodec.WriteDestination(request, _family, command, service, server, config);
        _netlink.Execute(request, Describe(command, service, server));
    }

    internal static string Describe(byte command, ServiceKey service) => $"IPVS {CommandName(command)} {service}";

    internal static string Describe(byte command, ServiceKey service, RealServerKey server) =>
        $"IPVS {CommandName(command)} {server} in {service}";

    private static string CommandName(byte command) => command switch
    {
        K.CmdNewService => "NEW_SERVICE",
        K.CmdSetService => "SET_SERVICE",
        K.CmdDelService => "DEL_SERVICE",
        K.CmdGetService => "GET_SERVICE",
        K.CmdNewDest => "NEW_DEST",
        K.CmdSetDest => "SET_DEST",
        K.CmdDelDest => "DEL_DEST",
        K.CmdGetDest => "GET_DEST",
        K.CmdZero => "ZERO",
        _ => $"command {command}",
    };
}
