using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Backoff = Merlin.Model.Backoff;
using Durations = Merlin.Model.Durations;
using Endpoints = Merlin.Model.Endpoints;
using Merlin.Contracts;
using Microsoft.Extensions.Logging;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Agent;

/// <summary>What one agent registers: this node, in these services, like this.</summary>
public sealed record AgentOptions
{
    /// <summary>The services (their store IDs) this node serves.</summary>
    public required IReadOnlyList<string> Services { get; init; }

    /// <summary>The node's own addresses (one per family it serves); the one of a service VIP's family is its real-server IP.</summary>
    public required IReadOnlyList<IPAddress> Addresses { get; init; }

    public uint Weight { get; init; } = 1;

    /// <summary>Route (direct server return) or tunnel: both deliver packets for the VIP, which is why it is on lo.</summary>
    public ForwardMethod Forward { get; init; } = ForwardMethod.Route;

    /// <summary>The health check the load balancers run against this node; null for none.</summary>
    public RealServer.Types.HealthCheck? HealthCheck { get; init; }

    /// <summary>How long a departing node keeps its established connections before it is removed.</summary>
    public TimeSpan DrainPeriod { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Deadline of each API call.</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long detaching keeps retrying an unreachable API before it detaches anyway.</summary>
    public TimeSpan DetachRetryLimit { get; init; } = TimeSpan.FromSeconds(30);

    public Metadata? Headers { get; init; }

    /// <summary>The load balancers' hash seed when this node gives connections a second chance (<see cref="SecondChanceAgent"/>); null: off.</summary>
    public uint? SecondChanceSeed { get; init; }

    /// <summary>Where to serve Prometheus metrics (<see cref="AgentMetrics"/>); null: nowhere.</summary>
    public IPEndPoint? MetricsAddress { get; init; }
}

/// <summary>A configuration the daemon's store cannot satisfy (a missing service, no address of a VIP's family).</summary>
public sealed class AgentConfigurationException(string message) : Exception(message);

/// <summary>
/// The real-server agent's life: attach (sysctls, VIPs on lo), register (create, or update and undrain
/// when the server exists — a restart midway leaves it so), then on stop drain, wait out the drain
/// period, delete, detach. Each step may be repeated, so an agent restarted at any point converges.
/// </summary>
public sealed partial class RealServerAgent(MerlinClient api, NodeAttachment node, AgentOptions options, TimeProvider time, ILogger<RealServerAgent> log)
{
    /// <summary>The servers this agent registered (or would have), for detaching.</summary>
    private readonly List<RealServer> _servers = [];

    /// <summary>The API refused a drain (compatibility mode go-merlin): the others are set to weight 0 without asking again.</summary>
    private bool _drainRefused;

    /// <summary>
    /// Attaches and registers, retrying an unreachable API until <paramref name="stop"/>; then waits for
    /// <paramref name="stop"/> and detaches. <paramref name="hurry"/> (a second signal) cuts the drain wait short.
    /// </summary>
    public async Task RunAsync(CancellationToken stop, CancellationToken hurry)
    {
        try
        {
            var targets = await RetryAsync("List", ct => api.ListAsync(new Empty(), Call(ct)).ResponseAsync, stop, TimeSpan.MaxValue);
            var (servers, vips) = Resolve(targets);
            _servers.AddRange(servers);
            await node.AttachAsync(vips, stop);
            LogAttached(string.Join(", ", vips));
            foreach (var server in _servers) await RegisterAsync(server, stop);
            LogRegistered(_servers.Count, string.Join(", ", _servers.Select(Describe)));
            await Task.Delay(Timeout.Infinite, stop);
        }
        catch (Exception e) when (stop.IsCancellationRequested && e is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled })
        {
            // Stopped before or after registering: detach below either way.
        }
        catch
        {
            // Refused (a wrong service, a permission): leave nothing behind that draws traffic here.
            await DetachAsync(new CancellationToken(canceled: true));
            throw;
        }
        await DetachAsync(hurry);
    }

    private async Task RegisterAsync(RealServer server, CancellationToken ct)
    {
        try
        {
            await RetryAsync("CreateServer", c => api.CreateServerAsync(server, Call(c)).ResponseAsync, ct, TimeSpan.MaxValue);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.AlreadyExists)
        {
            // Registered before (a restart, or a detach cut short): take our configuration and end any drain.
            await RetryAsync("UpdateServer", c => api.UpdateServerAsync(server, Call(c)).ResponseAsync, ct, TimeSpan.MaxValue);
            await RetryAsync("UndrainServer", c => api.UndrainServerAsync(Name(server), Call(c)).ResponseAsync, ct, TimeSpan.MaxValue);
        }
    }

    /// <summary>Drain, wait, delete, then take the VIPs off lo and restore the sysctls.</summary>
    private async Task DetachAsync(CancellationToken hurry)
    {
        if (_servers.Count > 0 && options.DrainPeriod > TimeSpan.Zero)
        {
            var drained = 0;
            foreach (var server in _servers)
                if (await DrainAsync(server))
                    drained++;
            LogDraining(drained, Durations.Format(options.DrainPeriod));
            try
            {
                // A drain that reached its deadline is removed by the load balancers on their own; the
                // delete below only makes the end prompt and covers a drain that could not be recorded.
                await Task.Delay(options.DrainPeriod, time, hurry);
            }
            catch (OperationCanceledException)
            {
                LogDrainCutShort();
            }
        }
        foreach (var server in _servers)
            await TryAsync("DeleteServer", ct => api.DeleteServerAsync(Name(server), Call(ct)).ResponseAsync);
        await node.DetachAsync(CancellationToken.None);
        LogDetached();
    }

    /// <summary>
    /// No new connections: a drain; or, where the API refuses drains (FailedPrecondition: its compatibility mode go-merlin
    /// is on, and Go nodes would ignore the deadline), weight 0, which every node understands. The wait and the delete
    /// that follow end either the way the drain's deadline would.
    /// </summary>
    private Task<bool> DrainAsync(RealServer server)
    {
        if (_drainRefused) return ZeroWeightAsync(server);
        return TryAsync("DrainServer", ct => api.DrainServerAsync(new DrainRequest { Server = Name(server), Period = Duration.FromTimeSpan(options.DrainPeriod) }, Call(ct)).ResponseAsync,
            refused: e =>
            {
                _drainRefused = true;
                LogDrainRefused(e.Status.Detail);
                return ZeroWeightAsync(server);
            });
    }

    private Task<bool> ZeroWeightAsync(RealServer server)
    {
        var zero = Name(server);
        zero.Config = new RealServer.Types.Config { Weight = 0 };
        return TryAsync("UpdateServer", ct => api.UpdateServerAsync(zero, Call(ct)).ResponseAsync);
    }

    /// <summary>
    /// A call whose failure must not stop a detach: NotFound is done, FailedPrecondition goes to <paramref name="refused"/>
    /// when given, anything else is logged after retries.
    /// </summary>
    private async Task<bool> TryAsync(string method, Func<CancellationToken, Task<Empty>> call, Func<RpcException, Task<bool>>? refused = null)
    {
        using var limit = new CancellationTokenSource(options.DetachRetryLimit, time);
        try
        {
            await RetryAsync(method, call, limit.Token, options.DetachRetryLimit);
            return true;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            return true;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition && refused is not null)
        {
            return await refused(e);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException)
        {
            LogGaveUp(method, e.Message);
            return false;
        }
    }

    /// <summary>Retries while the daemon is unreachable or restarting (Unavailable, DeadlineExceeded); other answers are final.</summary>
    private async Task<T> RetryAsync<T>(string method, Func<CancellationToken, Task<T>> call, CancellationToken ct, TimeSpan limit)
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(5));
        var started = time.GetTimestamp();
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await call(ct);
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded && !ct.IsCancellationRequested
                                         && time.GetElapsedTime(started) < limit)
            {
                if (attempt is 1 or 10 or 100) LogRetrying(method, e.Status.Detail, attempt);
                await Task.Delay(backoff.Next(), time, ct);
            }
        }
    }

    private CallOptions Call(CancellationToken ct) => new(options.Headers, time.GetUtcNow().UtcDateTime + options.CallTimeout, ct);

    /// <summary>This node's server in each service, in the form the API takes, and the services' VIPs.</summary>
    private (List<RealServer> Servers, List<IPAddress> Vips) Resolve(ListResponse list)
    {
        var servers = new List<RealServer>();
        var vips = new List<IPAddress>();
        foreach (var id in options.Services)
        {
            var key = list.Items.FirstOrDefault(i => i.Service?.Id == id)?.Service.Key
                ?? throw new AgentConfigurationException($"--service: service {Merlin.Model.Validation.Quote(id)} does not exist on the load balancers (meradm list shows what does)");
            if (string.IsNullOrEmpty(key.Ip) || !IPAddress.TryParse(key.Ip, out var vip))
                throw new AgentConfigurationException($"--service: service {Merlin.Model.Validation.Quote(id)} is a firewall-mark service; the agent attaches VIP:port services only");
            var own = options.Addresses.FirstOrDefault(a => a.AddressFamily == vip.AddressFamily)
                ?? throw new AgentConfigurationException($"--address: service {Merlin.Model.Validation.Quote(id)} has an {(vip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")} VIP ({vip}); give this node's address of that family");
            var server = new RealServer
            {
                ServiceID = id,
                // Direct server return and tunnels cannot change the port: the server listens on the VIP's.
                Key = new RealServer.Types.Key { Ip = own.ToString(), Port = key.Port },
                Config = new RealServer.Types.Config { Weight = options.Weight, Forward = options.Forward },
            };
            if (options.HealthCheck is { } health) server.HealthCheck = health.Clone();
            servers.Add(server);
            if (!vips.Contains(vip)) vips.Add(vip);
        }
        return (servers, vips);
    }

    private static RealServer Name(RealServer server) => new() { ServiceID = server.ServiceID, Key = server.Key.Clone() };

    private static string Describe(RealServer s) => $"{s.ServiceID} {Endpoints.Format(IPAddress.Parse(s.Key.Ip), (ushort)s.Key.Port)}";

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Attached: ARP sysctls set, VIPs on lo: {Vips}")]
    private partial void LogAttached(string vips);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Registered {Count} server(s): {Servers}")]
    private partial void LogRegistered(int count, string servers);

    [LoggerMessage(EventId = 3, Level = LogLevel.Information, Message = "Draining {Count} server(s) for {Period}: no new connections, established ones continue")]
    private partial void LogDraining(int count, string period);

    [LoggerMessage(EventId = 4, Level = LogLevel.Warning, Message = "Drain wait cut short by a second signal")]
    private partial void LogDrainCutShort();

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "Detached: servers deleted, VIPs removed from lo, sysctls restored")]
    private partial void LogDetached();

    [LoggerMessage(EventId = 6, Level = LogLevel.Warning, Message = "{Method}: the daemon did not answer ({Detail}); attempt {Attempt}, retrying")]
    private partial void LogRetrying(string method, string detail, int attempt);

    [LoggerMessage(EventId = 7, Level = LogLevel.Error, Message = "{Method} failed, detaching anyway: {Error}")]
    private partial void LogGaveUp(string method, string error);

    [LoggerMessage(EventId = 8, Level = LogLevel.Warning, Message = "DrainServer refused ({Detail}): setting weight 0 instead, then waiting the drain period and deleting, as the drain would")]
    private partial void LogDrainRefused(string detail);
}
