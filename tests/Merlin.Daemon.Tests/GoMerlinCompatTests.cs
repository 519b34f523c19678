using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Wire;
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

    private static T With<T>(T message, Action<T> change)
    {
        change(message);
        return message;
    }
}
