using System.Net;
using System.Text.Json.Nodes;
using Merlin.Api;
using Merlin.Api.Security;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Store;
using Merlin.Contracts;

namespace Merlin.Daemon;

/// <summary>
/// The status page on the health port: one self-contained HTML page (<c>/</c>, an embedded resource, no external
/// fetch) that polls <c>/status/detail</c> every second. That JSON is <c>/status</c> plus what a person looks for on
/// one node: every service and server with configured and effective weights, health verdicts and their last check,
/// drains with time left, the kernel's counters (the page turns them into rates), BGP peers. Read-only.
/// <para>
/// Access: the health port speaks plain HTTP, so no credential should cross the network on it. While the API asks
/// for credentials (<c>--tls-client-ca</c>, <c>--tokens-file</c>) the page and its JSON answer loopback callers
/// only (an operator elsewhere tunnels: <c>ssh -L</c>); otherwise whoever reaches the health port may read them,
/// as they may read <c>/status</c>.
/// </para>
/// </summary>
internal static class StatusPage
{
    private const string Resource = "Merlin.Daemon.StatusPage.html";

    private static readonly Lazy<byte[]> Html = new(() =>
    {
        using var stream = typeof(StatusPage).Assembly.GetManifestResourceStream(Resource)
            ?? throw new InvalidOperationException($"the status page ({Resource}) is missing from the build");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    });

    /// <summary>The formatter of <c>/status</c>, with every field present, so the page needs no defaults of its own.</summary>
    private static readonly Google.Protobuf.JsonFormatter Formatter = new(Google.Protobuf.JsonFormatter.Settings.Default.WithFormatDefaultValues(true));

    public static void Map(WebApplication app, string healthHost)
    {
        app.MapGet("/", (HttpContext http, ApiCredentials credentials) =>
            Refused(http, credentials) ?? Results.Bytes(Html.Value, "text/html; charset=utf-8")).RequireHost(healthHost);
        app.MapGet("/status/detail", async (HttpContext http, ApiCredentials credentials, IServiceProvider services) =>
            Refused(http, credentials) ?? Results.Text((await DetailAsync(services, http.RequestAborted)).ToJsonString(), "application/json"))
            .RequireHost(healthHost);
    }

    /// <summary>Null when the caller may read the page; else why not.</summary>
    internal static IResult? Refused(HttpContext http, ApiCredentials credentials)
    {
        http.Response.Headers.CacheControl = "no-store";
        if (!credentials.Required || http.Connection.RemoteIpAddress is { } ip && IPAddress.IsLoopback(ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip)) return null;
        return Results.Text("The status page is served to loopback callers only while the API asks for credentials " +
                            "(the health port has no TLS). From elsewhere: ssh -L 4283:127.0.0.1:4283 <node>, then http://127.0.0.1:4283/\n",
            statusCode: StatusCodes.Status403Forbidden);
    }

    private static async Task<JsonObject> DetailAsync(IServiceProvider services, CancellationToken ct)
    {
        var time = services.GetRequiredService<TimeProvider>();
        var reporter = services.GetRequiredService<IStatusReporter>();
        var now = time.GetUtcNow();
        var detail = (JsonObject)JsonNode.Parse(Formatter.Format(StatusWireMapper.ToWire(reporter.Report())))!;
        detail["now"] = now.ToString("O");
        detail["bgpPeers"] = BgpPeers(services);

        CountersResponse counters;
        try { counters = StatusWireMapper.ToWire(await reporter.CountersAsync(ct)); }
        catch (Exception e) when (e is not OperationCanceledException) { counters = new CountersResponse(); detail["countersError"] = e.Message; }
        detail["hasCounters"] = services.GetRequiredService<IDataplane>() is IDataplaneCounters;

        StoreSnapshot snapshot;
        try { snapshot = await services.GetRequiredService<IStore>().ListAsync(ct); }
        catch (StoreUnavailableException e)
        {
            detail["storeError"] = e.Message;
            detail["virtualServices"] = new JsonArray();
            return detail;
        }

        var health = services.GetRequiredService<Merlin.Health.HealthChecker>().Report().ToDictionary(r => (r.Service, r.Server));
        var effective = services.GetRequiredService<ReconcilerStatus>().Current.Desired;
        var list = new JsonArray();
        foreach (var item in snapshot.Items.OrderBy(i => i.Service.Id, StringComparer.Ordinal))
        {
            if (item.Service.Service is not { } service) continue; // not programmable; the log says why
            var key = service.Key;
            var wireKey = WireMapper.ToWire(key);
            var serviceTraffic = counters.Services.FirstOrDefault(s => wireKey.Equals(s.Key));
            var servers = new JsonArray();
            foreach (var stored in item.Servers)
            {
                if (stored.Server is not { } server) continue;
                var at = server.Key;
                var node = new JsonObject
                {
                    ["address"] = at.ToString(),
                    ["weight"] = server.Config.Weight,
                    ["forward"] = server.Config.Forward.ToString().ToLowerInvariant(),
                };
                if (effective?.Services.GetValueOrDefault(key)?.Servers.GetValueOrDefault(at) is { } programmed) node["effectiveWeight"] = programmed.Weight;
                if (health.TryGetValue((key, at), out var h))
                {
                    node["health"] = new JsonObject
                    {
                        ["verdict"] = h.Verdict.ToString().ToLowerInvariant(),
                        ["detail"] = h.Detail,
                        ["since"] = h.Since?.ToString("O"),
                        ["lastCheck"] = h.LastCheck?.ToString("O"),
                        ["endpoint"] = server.HealthCheck.Endpoint is { } endpoint ? WireMapper.FormatEndpoint(endpoint) : null,
                    };
                }
                if (server.DrainDeadline is { } deadline)
                {
                    node["drainDeadline"] = deadline.ToString("O");
                    node["drainSecondsLeft"] = Math.Max(0, (deadline - now).TotalSeconds);
                }
                if (serviceTraffic?.Servers.FirstOrDefault(s => WireMapper.ToWire(at).Equals(s.Key)) is { } t)
                {
                    node["counters"] = TrafficJson(t.Totals);
                    node["activeConnections"] = t.ActiveConnections;
                    node["inactiveConnections"] = t.InactiveConnections;
                }
                servers.Add(node);
            }
            var entry = new JsonObject
            {
                ["id"] = item.Service.Id,
                ["key"] = key.ToString(),
                ["scheduler"] = service.Config.Scheduler,
                ["flags"] = new JsonArray(Merlin.Store.Protobuf.StoredRecords.Message(item.Service).Config?.Flags.Select(f => (JsonNode?)f).ToArray() ?? []), // as stored
                ["servers"] = servers,
            };
            if (serviceTraffic is not null) entry["counters"] = TrafficJson(serviceTraffic.Totals);
            list.Add(entry);
        }
        detail["virtualServices"] = list; // "services" is /status's count
        return detail;
    }

    private static JsonObject TrafficJson(Traffic t) => new()
    {
        ["connections"] = t.Connections, ["inPackets"] = t.InPackets, ["outPackets"] = t.OutPackets, ["inBytes"] = t.InBytes, ["outBytes"] = t.OutBytes,
    };

    private static JsonArray BgpPeers(IServiceProvider services)
    {
        var peers = new JsonArray();
        if (services.GetRequiredService<Merlin.Announcer.IAnnouncer>() is not Merlin.Announcer.Bgp.GobgpAnnouncer bgp
            || services.GetRequiredService<DaemonOptions>().Bgp is not { } options) return peers;
        var sessions = bgp.Sessions;
        foreach (var peer in options.Peers)
        {
            var session = sessions.FirstOrDefault(s => s.Address.Equals(peer.Address));
            peers.Add(new JsonObject
            {
                ["address"] = peer.Address.ToString(),
                ["asn"] = peer.Asn,
                ["state"] = session?.State ?? "NOT STARTED",
                ["established"] = session?.Established ?? false,
                ["advertised"] = session?.Advertised ?? 0,
            });
        }
        return peers;
    }
}
