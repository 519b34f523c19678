using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Contracts;
using Go = Original.Types;

namespace Merlin.Daemon.Tests;

/// <summary>
/// Compatibility mode go-merlin (issue 21): kept in the store, set through the API, and while it is on the API
/// refuses every record a Go merlin (v0.2.2) sharing the store could not program. Off, everything works as before.
/// </summary>
public class GoMerlinCompatTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static VirtualService Svc(string id, string ip = "198.18.0.10", uint port = 80, Protocol protocol = Protocol.Tcp, string scheduler = "rr") => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Ip = ip, Port = port, Protocol = protocol },
        Config = new VirtualService.Types.Config { Scheduler = scheduler },
    };

    private static RealServer Rs(string serviceId, string ip, uint port = 80, uint weight = 1, ForwardMethod forward = ForwardMethod.Route) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = port },
        Config = new RealServer.Types.Config { Weight = weight, Forward = forward },
    };

    private static RealServer.Types.HealthCheck Check(string endpoint) => new()
    {
        Endpoint = endpoint, Period = Duration.FromTimeSpan(TimeSpan.FromSeconds(5)), Timeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(1)),
        UpThreshold = 2, DownThreshold = 2,
    };

    private static async Task GoMerlinOn(RunningDaemon daemon) =>
        Assert.Equal("go-merlin", (await daemon.Extended.UpdateSettingsAsync(new Settings { Compatibility = "go-merlin" }, cancellationToken: Ct)).Compatibility);

    /// <summary>Each case: a request the mode refuses, and the field its error must name.</summary>
    public static TheoryData<string, string, string> Refused()
    {
        var data = new TheoryData<string, string, string>();
        foreach (var backend in new[] { "sqlite", "etcd3" })
        {
            foreach (var (kind, field) in new[]
            {
                ("sctp", "key.protocol"), ("ipv6", "key.ip"), ("fwmark", "key.fwmark"), ("persistence", "config.persistence_timeout"),
                ("one-packet", "config.one_packet"), ("id-prefix", "id"), ("gue", "config.tunnel_type"), ("gre", "config.tunnel_type"),
                ("threshold", "config.upper_threshold"), ("https-check", "health_check.endpoint"), ("tcp-check", "health_check.endpoint"),
                ("query-check", "health_check.endpoint"), ("drain", "drain_deadline"), ("update-persistence", "config.persistence_timeout"),
                ("update-check", "health_check.endpoint"),
            })
                data.Add(backend, kind, field);
        }
        return data;
    }

    [Theory, MemberData(nameof(Refused))]
    public async Task ModeOn_RefusesWhatAGoMerlinCannotProgram_NamingTheField_AndStoresNothing(string backend, string kind, string field)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var api = daemon.Extended;
        await api.CreateServiceAsync(Svc("web", scheduler: "sh"), cancellationToken: Ct);
        await api.CreateServerAsync(Rs("web", "198.18.1.1"), cancellationToken: Ct);
        await GoMerlinOn(daemon);
        var before = await api.ListAsync(new Empty(), cancellationToken: Ct);

        Func<Task> call = kind switch
        {
            "sctp" => () => api.CreateServiceAsync(Svc("s", protocol: Protocol.Sctp), cancellationToken: Ct).ResponseAsync,
            "ipv6" => () => api.CreateServiceAsync(Svc("s", "2001:db8::10"), cancellationToken: Ct).ResponseAsync,
            "fwmark" => () => api.CreateServiceAsync(new VirtualService { Id = "s", Key = new() { Fwmark = 7 }, Config = new() { Scheduler = "rr" } }, cancellationToken: Ct).ResponseAsync,
            "persistence" => () => api.CreateServiceAsync(With(Svc("s", port: 81), s => s.Config.PersistenceTimeout = 300), cancellationToken: Ct).ResponseAsync,
            "one-packet" => () => api.CreateServiceAsync(With(Svc("s", port: 81, protocol: Protocol.Udp), s => s.Config.OnePacket = true), cancellationToken: Ct).ResponseAsync,
            "id-prefix" => () => api.CreateServiceAsync(Svc("web2", port: 81), cancellationToken: Ct).ResponseAsync,
            "gue" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2", forward: ForwardMethod.Tunnel), r => { r.Config.TunnelType = TunnelType.Gue; r.Config.TunnelPort = 6080; }), cancellationToken: Ct).ResponseAsync,
            "gre" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2", forward: ForwardMethod.Tunnel), r => r.Config.TunnelType = TunnelType.Gre), cancellationToken: Ct).ResponseAsync,
            "threshold" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2"), r => r.Config.UpperThreshold = 100), cancellationToken: Ct).ResponseAsync,
            "https-check" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2"), r => r.HealthCheck = Check("https://:8443/health")), cancellationToken: Ct).ResponseAsync,
            "tcp-check" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2"), r => r.HealthCheck = Check("tcp://:8080")), cancellationToken: Ct).ResponseAsync,
            "query-check" => () => api.CreateServerAsync(With(Rs("web", "198.18.1.2"), r => r.HealthCheck = Check("http://:8080/health?deep=1")), cancellationToken: Ct).ResponseAsync,
            "drain" => () => api.DrainServerAsync(new DrainRequest { Server = Rs("web", "198.18.1.1"), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)) }, cancellationToken: Ct).ResponseAsync,
            "update-persistence" => () => api.UpdateServiceAsync(new VirtualService { Id = "web", Config = new() { PersistenceTimeout = 60 } }, cancellationToken: Ct).ResponseAsync,
            "update-check" => () => api.UpdateServerAsync(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 }, HealthCheck = Check("grpc://:9090") }, cancellationToken: Ct).ResponseAsync,
            _ => throw new ArgumentOutOfRangeException(nameof(kind)),
        };

        var e = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.StartsWith($"{field}: compatibility mode go-merlin is on, and a Go merlin sharing the store cannot program this: ", e.Status.Detail);
        Assert.Equal(before, await api.ListAsync(new Empty(), cancellationToken: Ct));
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task ModeOn_AcceptsWhatAGoMerlinCanProgram_AndStatusSaysSo_AndOffAcceptsEverythingAgain(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var api = daemon.Extended;
        Assert.Equal("", (await api.StatusAsync(new Empty(), cancellationToken: Ct)).Compatibility); // off by default
        var (code, text, _) = await daemon.MeradmAsync("compat", "go-merlin");
        Assert.Equal(0, code);
        Assert.Equal("go-merlin (the API refuses records a Go merlin cannot program)", text.Trim());

        await api.CreateServiceAsync(With(Svc("web", scheduler: "sh"), s => s.Config.Flags.Add("sh-port")), cancellationToken: Ct);
        await api.CreateServiceAsync(Svc("dns", port: 53, protocol: Protocol.Udp, scheduler: "mh"), cancellationToken: Ct);
        await api.CreateServerAsync(With(Rs("web", "198.18.1.1"), r => r.HealthCheck = Check("http://:8080/healthz")), cancellationToken: Ct);
        await api.CreateServerAsync(With(Rs("web", "198.18.1.2", forward: ForwardMethod.Tunnel), r => r.Config.TunnelType = TunnelType.Ipip), cancellationToken: Ct);
        await api.CreateServerAsync(Rs("dns", "198.18.1.3", port: 53, weight: 0, forward: ForwardMethod.Masq), cancellationToken: Ct);
        await api.UpdateServerAsync(new RealServer { ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 }, Config = new() { Weight = 7 } }, cancellationToken: Ct);
        await api.UndrainServerAsync(Rs("web", "198.18.1.1"), cancellationToken: Ct); // harmless: clears nothing
        await daemon.WaitForDataplaneAsync(s => s.ServerCount == 3);

        var status = await daemon.MeradmAsync("status");
        Assert.Matches(@"(?m)^compatibility +go-merlin \(the API refuses records a Go merlin cannot program\)$", status.Out);
        Assert.Equal("go-merlin", (await api.GetSettingsAsync(new Empty(), cancellationToken: Ct)).Compatibility);

        Assert.Equal(0, (await daemon.MeradmAsync("compat", "off")).Code);
        Assert.Equal("off", (await daemon.MeradmAsync("compat")).Out.Trim());
        Assert.DoesNotContain("compatibility", (await daemon.MeradmAsync("status")).Out);
        await api.CreateServiceAsync(Svc("sctp", port: 9899, protocol: Protocol.Sctp), cancellationToken: Ct);
        await api.CreateServiceAsync(Svc("v6", "2001:db8::10"), cancellationToken: Ct);
        await api.DrainServerAsync(new DrainRequest { Server = Rs("web", "198.18.1.1"), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)) }, cancellationToken: Ct);
        await daemon.WaitForDataplaneAsync(s => s.Services.Count == 4);
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task Settings_RefuseAnUnknownMode_NamingTheField(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);

        var e = await Assert.ThrowsAsync<RpcException>(() => daemon.Extended.UpdateSettingsAsync(new Settings { Compatibility = "go" }, cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("compatibility: \"go\" is not a compatibility mode (\"go-merlin\", or \"\" for none)", e.Status.Detail);
        Assert.Equal(new Settings(), await daemon.Extended.GetSettingsAsync(new Empty(), cancellationToken: Ct));
        // A request that sets nothing changes nothing.
        Assert.Equal(new Settings(), await daemon.Extended.UpdateSettingsAsync(new Settings(), cancellationToken: Ct));
    }

    [Theory, MemberData(nameof(Backends))]
    public async Task SchedulerChange_KeepsTheFlagsTheNewSchedulerNames_AndDropsTheRest(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var go = daemon.Original; // as the Go meradm sends `service edit web -s mh`: a scheduler, no flags
        await go.CreateServiceAsync(new Go.VirtualService
        {
            Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Go.Protocol.Tcp },
            Config = new() { Scheduler = "sh", Flags = { "flag-1", "flag-2" } },
        }, cancellationToken: Ct);

        await go.UpdateServiceAsync(new Go.VirtualService { Id = "web", Config = new() { Scheduler = "mh" } }, cancellationToken: Ct);
        var mh = Assert.Single((await go.ListAsync(new Empty(), cancellationToken: Ct)).Items).Service.Config;
        // sh and mh read both bits alike (fallback, port): the flows hash as before, as with the Go merlin.
        Assert.Equal(["flag-1", "flag-2"], mh.Flags);

        await go.UpdateServiceAsync(new Go.VirtualService { Id = "web", Config = new() { Scheduler = "wrr" } }, cancellationToken: Ct);
        var wrr = Assert.Single((await go.ListAsync(new Empty(), cancellationToken: Ct)).Items).Service.Config;
        Assert.Equal("wrr", wrr.Scheduler);
        Assert.Empty(wrr.Flags); // wrr has no flags; the Go merlin kept them, and the kernel ignored them
    }

    /// <summary>
    /// Property: with the mode on, random requests of every kind Merlin supports (valid or not for a Go merlin)
    /// never leave a record in the store that the Go merlin's own code would refuse or panic on. The rules are
    /// restated here from its source, not taken from Merlin's, and checked on the records as a client built
    /// from the original proto reads them (an unknown field in a key or config is something it cannot match).
    /// </summary>
    [Theory, MemberData(nameof(Backends))]
    public async Task ModeOn_RandomRequests_NeverStoreARecordTheGoMerlinRefuses(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var api = daemon.Extended;
        await GoMerlinOn(daemon);
        var random = new Random(21);
        string[] ids = ["web", "web2", "api", "dns", "a"];
        var accepted = 0;
        for (var i = 0; i < 400; i++)
        {
            var id = ids[random.Next(ids.Length)];
            var serverIp = random.Next(4) == 0 ? $"2001:db8::{random.Next(1, 9)}" : $"198.18.1.{random.Next(1, 9)}";
            Func<Task> call = random.Next(8) switch
            {
                0 or 1 => () => api.CreateServiceAsync(RandomService(random, id), cancellationToken: Ct).ResponseAsync,
                2 => () => api.UpdateServiceAsync(new VirtualService { Id = id, Config = RandomService(random, id).Config }, cancellationToken: Ct).ResponseAsync,
                3 or 4 => () => api.CreateServerAsync(RandomServer(random, id, serverIp), cancellationToken: Ct).ResponseAsync,
                5 => () => api.UpdateServerAsync(RandomServer(random, id, serverIp), cancellationToken: Ct).ResponseAsync,
                6 => () => api.DrainServerAsync(new DrainRequest { Server = Rs(id, serverIp), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(1)) }, cancellationToken: Ct).ResponseAsync,
                _ => () => api.DeleteServiceAsync(new StringValue { Value = id }, cancellationToken: Ct).ResponseAsync,
            };
            try
            {
                await call();
                accepted++;
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.FailedPrecondition or StatusCode.InvalidArgument or StatusCode.NotFound or StatusCode.AlreadyExists) { }
        }

        var list = await daemon.Original.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.True(accepted > 40, $"only {accepted} of 400 requests were accepted: the run proves little");
        Assert.NotEmpty(list.Items.SelectMany(i => i.Servers));
        var storedIds = list.Items.Select(i => i.Service.Id).ToList();
        foreach (var item in list.Items)
        {
            GoAccepts(item.Service, storedIds);
            foreach (var server in item.Servers) GoAccepts(server);
        }
    }

    private static readonly string[] Schedulers = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"];

    private static VirtualService RandomService(Random r, string id)
    {
        var scheduler = Schedulers[r.Next(Schedulers.Length)];
        var key = r.Next(6) switch
        {
            0 => new VirtualService.Types.Key { Fwmark = (uint)r.Next(1, 5) },
            1 => new VirtualService.Types.Key { Ip = $"2001:db8::{r.Next(1, 9)}", Port = 80, Protocol = Protocol.Tcp },
            _ => new VirtualService.Types.Key { Ip = $"198.18.0.{r.Next(1, 9)}", Port = (uint)r.Next(80, 83), Protocol = (Protocol)r.Next(1, 4) },
        };
        var config = new VirtualService.Types.Config { Scheduler = scheduler };
        if (scheduler is "sh" or "mh" && r.Next(2) == 0) config.Flags.Add(r.Next(2) == 0 ? $"{scheduler}-port" : "flag-1");
        if (r.Next(5) == 0) config.PersistenceTimeout = 300;
        if (r.Next(8) == 0) config.OnePacket = true;
        return new VirtualService { Id = id, Key = key, Config = config };
    }

    private static RealServer RandomServer(Random r, string id, string ip)
    {
        var server = Rs(id, ip, weight: (uint)r.Next(0, 100), forward: (ForwardMethod)r.Next(1, 4));
        if (server.Config.Forward == ForwardMethod.Tunnel)
        {
            server.Config.TunnelType = (TunnelType)r.Next(0, 3);
            if (server.Config.TunnelType == TunnelType.Gue) server.Config.TunnelPort = 6080;
        }
        if (r.Next(6) == 0) server.Config.UpperThreshold = 100;
        if (r.Next(2) == 0) server.HealthCheck = Check(r.Next(5) switch { 0 => "https://:8443/h", 1 => "tcp://:8080", 2 => "grpc://:9090", 3 => "http://:8080/h?x=1", _ => "http://:8080/healthz" });
        return server;
    }

    /// <summary>The Go merlin's rules for a service, from its server, reconciler and ipvs packages.</summary>
    private static void GoAccepts(Go.VirtualService s, IReadOnlyList<string> ids)
    {
        // Fields it does not know make proto.Equal(stored, kernel) false forever: it adds the service again, and panics.
        Assert.Equal(new Go.VirtualService.Types.Key { Ip = s.Key.Ip, Port = s.Key.Port, Protocol = s.Key.Protocol }, s.Key);
        Assert.Equal(new Go.VirtualService.Types.Config { Scheduler = s.Config.Scheduler, Flags = { s.Config.Flags } }, s.Config);
        Assert.Contains(s.Key.Protocol, new[] { Go.Protocol.Tcp, Go.Protocol.Udp }); // toProtocolBits: anything else panics
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.IPAddress.Parse(s.Key.Ip).AddressFamily); // AF_INET always
        Assert.InRange(s.Key.Port, 1u, 65535u);
        Assert.Contains(s.Config.Scheduler, Schedulers); // handed to the kernel as it is
        Assert.All(s.Config.Flags, f => Assert.Contains(f, new[] { "flag-1", "flag-2", "flag-3" })); // the only names it maps to bits
        Assert.Equal(s.Config.Flags.Distinct().Count(), s.Config.Flags.Count);
        Assert.DoesNotContain(ids, other => other != s.Id && (other.StartsWith(s.Id, StringComparison.Ordinal) || s.Id.StartsWith(other, StringComparison.Ordinal)));
    }

    /// <summary>The Go merlin's rules for a real server.</summary>
    private static void GoAccepts(Go.RealServer r)
    {
        Assert.Equal(new Go.RealServer { ServiceID = r.ServiceID, Key = r.Key, Config = r.Config, HealthCheck = r.HealthCheck }, r); // no drain_deadline: it would ignore it
        Assert.Equal(new Go.RealServer.Types.Key { Ip = r.Key.Ip, Port = r.Key.Port }, r.Key);
        Assert.Equal(new Go.RealServer.Types.Config { Weight = r.Config.Weight, Forward = r.Config.Forward }, r.Config);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.IPAddress.Parse(r.Key.Ip).AddressFamily);
        Assert.Contains(r.Config.Forward, new[] { Go.ForwardMethod.Route, Go.ForwardMethod.Tunnel, Go.ForwardMethod.Masq });
        Assert.NotNull(r.Config.Weight);
        Assert.InRange(r.Config.Weight.Value, 0u, (uint)int.MaxValue); // the kernel refuses a negative int
        Assert.NotNull(r.HealthCheck); // its checker panics ("health check not added yet") on a server without one
        if (string.IsNullOrEmpty(r.HealthCheck.Endpoint)) return;
        var endpoint = new Uri(r.HealthCheck.Endpoint.Replace("://:", "://h:", StringComparison.Ordinal));
        Assert.Equal("http", endpoint.Scheme); // any other scheme panics its checker
        Assert.Equal("", endpoint.Query);
        Assert.True(r.HealthCheck.Period.ToTimeSpan() > TimeSpan.Zero); // time.NewTicker panics on 0
        Assert.True(r.HealthCheck.Timeout.ToTimeSpan() > TimeSpan.Zero);
        Assert.True(r.HealthCheck.UpThreshold > 0 && r.HealthCheck.DownThreshold > 0);
    }

    private static T With<T>(T message, Action<T> change)
    {
        change(message);
        return message;
    }
}
