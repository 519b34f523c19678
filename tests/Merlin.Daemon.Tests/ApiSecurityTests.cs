using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Testing;
using Merlin.Contracts;
using static Merlin.Daemon.Tests.SecuredDaemon;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// Every API method against a daemon that requires credentials: each identity that must be refused is
/// refused with the right status code and leaves the store as it was; the ones that may act, can.
/// </summary>
public sealed class ApiSecurityTests(SecuredDaemon secured) : IClassFixture<SecuredDaemon>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private const StatusCode Ok = StatusCode.OK;

    /// <summary>Each RPC with a request that would change the seeded store if it were let through.</summary>
    public static readonly IReadOnlyList<(string Method, Func<MerlinClient, Task> Call)> EveryMethod =
    [
        ("CreateService", c => c.CreateServiceAsync(new VirtualService
        {
            Id = "intruder", Key = new() { Ip = "198.18.0.66", Port = 80, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "rr" },
        }, cancellationToken: Ct).ResponseAsync),
        ("UpdateService", c => c.UpdateServiceAsync(new VirtualService { Id = "web", Config = new() { Scheduler = "wrr" } }, cancellationToken: Ct).ResponseAsync),
        ("DeleteService", c => c.DeleteServiceAsync(new StringValue { Value = "web" }, cancellationToken: Ct).ResponseAsync),
        ("CreateServer", c => c.CreateServerAsync(Server("web", OwnIp, 8080, weight: 1), cancellationToken: Ct).ResponseAsync),
        ("UpdateServer", c => c.UpdateServerAsync(Server("web", OwnIp, 80, weight: 7), cancellationToken: Ct).ResponseAsync),
        ("DeleteServer", c => c.DeleteServerAsync(Server("web", OwnIp, 80), cancellationToken: Ct).ResponseAsync),
        ("DrainServer", c => c.DrainServerAsync(new DrainRequest
        {
            Server = Server("web", OwnIp, 80), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)),
        }, cancellationToken: Ct).ResponseAsync),
        ("UndrainServer", c => c.UndrainServerAsync(Server("web", OwnIp, 80), cancellationToken: Ct).ResponseAsync),
        ("List", c => c.ListAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("ListStream", async c =>
        {
            using var call = c.ListStream(new Empty(), cancellationToken: Ct);
            while (await call.ResponseStream.MoveNext(Ct)) { }
        }),
        ("Status", c => c.StatusAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("Counters", c => c.CountersAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("DrainNode", c => c.DrainNodeAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("UndrainNode", c => c.UndrainNodeAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("GetSettings", c => c.GetSettingsAsync(new Empty(), cancellationToken: Ct).ResponseAsync),
        ("UpdateSettings", c => c.UpdateSettingsAsync(new Settings(), cancellationToken: Ct).ResponseAsync),
        ("GetTable", c => c.GetTableAsync(new StringValue { Value = "web" }, cancellationToken: Ct).ResponseAsync),
    ];

    [Fact]
    public void EveryMethod_CoversEveryRpcOfTheService()
    {
        var rpcs = Wire.Merlin.Descriptor.Methods.Select(m => m.Name).Order();
        Assert.Equal(rpcs, EveryMethod.Select(m => m.Method).Order());
    }

    [Fact]
    public Task WithoutCredentials_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(secured.Client(), _ => StatusCode.Unauthenticated, "no credentials: this API requires a client certificate or a bearer token");

    [Fact]
    public Task CertificateFromAnotherCa_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(secured.Client(secured.OtherPki.Client("agent-21", "realserver", OwnIp)), _ => StatusCode.Unauthenticated,
            "was not issued by the client CA this daemon trusts");

    [Fact]
    public Task SelfSignedCertificate_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(secured.Client(TestPki.CreateCa("CN=admin")), _ => StatusCode.Unauthenticated, "was not issued by the client CA");

    [Fact]
    public Task ExpiredCertificate_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(
            secured.Client(secured.Pki.Issue("old-admin", ["merlin:role:admin"], [], notBefore: DateTimeOffset.UtcNow.AddDays(-30), notAfter: DateTimeOffset.UtcNow.AddDays(-1))),
            _ => StatusCode.Unauthenticated, "expired on");

    [Fact]
    public Task CertificateNotForClientAuthentication_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(secured.Client(secured.Pki.Server()), _ => StatusCode.Unauthenticated, "not valid for client authentication");

    [Fact]
    public Task CertificateWithoutRole_EveryMethodIsPermissionDenied() =>
        AssertEveryMethod(secured.Client(secured.Pki.Client("nobody", role: null, OwnIp)), _ => StatusCode.PermissionDenied, "must carry exactly one role");

    [Fact]
    public Task CertificateWithUnknownRole_EveryMethodIsPermissionDenied() =>
        AssertEveryMethod(secured.Client(secured.Pki.Client("root", "root", OwnIp)), _ => StatusCode.PermissionDenied, "known roles are");

    [Fact]
    public Task CertificateWithTwoRoles_EveryMethodIsPermissionDenied() =>
        AssertEveryMethod(secured.Client(secured.Pki.Issue("both", ["merlin:role:realserver", "merlin:role:admin"], [OwnIp])),
            _ => StatusCode.PermissionDenied, "exactly one role");

    [Fact]
    public Task RealServerCertificateWithoutIp_EveryMethodIsPermissionDenied() =>
        AssertEveryMethod(secured.Client(secured.Pki.Client("agent", "realserver")), _ => StatusCode.PermissionDenied, "no IP SAN");

    [Fact]
    public Task RealServerCertificateForAnotherIp_MayOnlyListAndStatus() =>
        AssertEveryMethod(secured.Client(secured.Pki.Client("agent-99", "realserver", OtherIp)), RealServerForAnotherIp,
            "may UpdateServer only servers with its own IP (198.18.1.99), not 198.18.1.21");

    [Fact]
    public Task RealServerTokenForAnotherIp_MayOnlyListAndStatus() =>
        AssertEveryMethod(secured.Client(token: OtherToken), RealServerForAnotherIp, "bearer token on line 4 of the tokens file");

    [Fact]
    public Task UnknownToken_EveryMethodIsUnauthenticated() =>
        AssertEveryMethod(secured.Client(token: "not-a-token-in-the-file-at-all"), _ => StatusCode.Unauthenticated, "not in the daemon's tokens file");

    [Fact]
    public Task TrustedCertificateWinsOverToken_AnUntrustedOneIsNotRescuedByAToken() =>
        AssertEveryMethod(secured.Client(secured.OtherPki.Client("agent", "admin"), token: AdminToken), _ => StatusCode.Unauthenticated,
            "was not issued by the client CA");

    private static StatusCode RealServerForAnotherIp(string method) => method is "List" or "ListStream" or "Status" or "GetTable" ? Ok : StatusCode.PermissionDenied;

    [Fact]
    public async Task RealServerCertificate_CreatesUpdatesAndDeletesItsOwnServer_Only()
    {
        await AssertManagesOwnServer(secured.Client(secured.Pki.Client("agent-21", "realserver", OwnIp, IPAddress.Parse("2001:db8::21"))), port: 8081);
    }

    [Fact]
    public async Task RealServerToken_CreatesUpdatesAndDeletesItsOwnServer_Only()
    {
        await AssertManagesOwnServer(secured.Client(token: OwnToken), port: 8082);
    }

    private async Task AssertManagesOwnServer(MerlinClient agent, uint port)
    {
        await agent.CreateServerAsync(Server("web", OwnIp, port, weight: 3), cancellationToken: Ct);
        Assert.Equal(3u, (await OwnServer(port))?.Config.Weight);

        await agent.UpdateServerAsync(Server("web", OwnIp, port, weight: 0), cancellationToken: Ct);
        Assert.Equal(0u, (await OwnServer(port))?.Config.Weight);

        await agent.DrainServerAsync(new DrainRequest { Server = Server("web", OwnIp, port), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)) }, cancellationToken: Ct);
        Assert.NotNull((await OwnServer(port))?.DrainDeadline);
        await agent.UndrainServerAsync(Server("web", OwnIp, port), cancellationToken: Ct);
        Assert.Null((await OwnServer(port))?.DrainDeadline);

        // Someone else's server, and services, stay out of reach.
        var other = await Assert.ThrowsAsync<RpcException>(() => agent.UpdateServerAsync(Server("web", OtherIp, 80, weight: 0), cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, other.StatusCode);
        var drainOther = await Assert.ThrowsAsync<RpcException>(() => agent.DrainServerAsync(
            new DrainRequest { Server = Server("web", OtherIp, 80), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)) }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, drainOther.StatusCode);
        var service = await Assert.ThrowsAsync<RpcException>(() => agent.DeleteServiceAsync(new StringValue { Value = "web" }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, service.StatusCode);
        Assert.Contains("may not call DeleteService: only admin may", service.Status.Detail);

        await agent.DeleteServerAsync(Server("web", OwnIp, port), cancellationToken: Ct);
        Assert.Null(await OwnServer(port));
    }

    private async Task<RealServer?> OwnServer(uint port)
    {
        var list = await secured.Admin.ListAsync(new Empty(), cancellationToken: Ct);
        return list.Items.Single(i => i.Service.Id == "web").Servers.SingleOrDefault(s => s.Key.Ip == OwnIp.ToString() && s.Key.Port == port);
    }

    [Fact]
    public async Task AdminCertificate_MayCallEveryMethod()
    {
        await AssertAdminMayDoEverything(secured.Admin, "cert-admin");
    }

    [Fact]
    public async Task AdminToken_MayCallEveryMethod()
    {
        await AssertAdminMayDoEverything(secured.Client(token: AdminToken), "token-admin");
    }

    private static async Task AssertAdminMayDoEverything(MerlinClient admin, string id)
    {
        await admin.CreateServiceAsync(new VirtualService
        {
            Id = id, Key = new() { Ip = id == "cert-admin" ? "198.18.0.20" : "198.18.0.21", Port = 443, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "rr" },
        }, cancellationToken: Ct);
        await admin.UpdateServiceAsync(new VirtualService { Id = id, Config = new() { Scheduler = "wrr" } }, cancellationToken: Ct);
        await admin.CreateServerAsync(Server(id, IPAddress.Parse("198.18.1.50"), 443, weight: 1), cancellationToken: Ct);
        await admin.UpdateServerAsync(Server(id, IPAddress.Parse("198.18.1.50"), 443, weight: 5), cancellationToken: Ct);
        var list = await admin.ListAsync(new Empty(), cancellationToken: Ct);
        Assert.Equal(5u, list.Items.Single(i => i.Service.Id == id).Servers.Single().Config.Weight);
        await admin.DrainServerAsync(new DrainRequest { Server = Server(id, IPAddress.Parse("198.18.1.50"), 443), Period = Duration.FromTimeSpan(TimeSpan.FromMinutes(5)) }, cancellationToken: Ct);
        await admin.UndrainServerAsync(Server(id, IPAddress.Parse("198.18.1.50"), 443), cancellationToken: Ct);
        await admin.StatusAsync(new Empty(), cancellationToken: Ct);
        await admin.CountersAsync(new Empty(), cancellationToken: Ct);
        await admin.DeleteServerAsync(Server(id, IPAddress.Parse("198.18.1.50"), 443), cancellationToken: Ct);
        await admin.DeleteServiceAsync(new StringValue { Value = id }, cancellationToken: Ct);
        Assert.DoesNotContain((await admin.ListAsync(new Empty(), cancellationToken: Ct)).Items, i => i.Service.Id == id);
    }

    /// <summary>Calls every method; each must end with its expected code, a refusal must say why, and the store must not change.</summary>
    private async Task AssertEveryMethod(MerlinClient client, Func<string, StatusCode> expected, string reason)
    {
        var before = await Stored();
        var wrong = new List<string>();
        var reasons = new List<string>();
        foreach (var (method, call) in EveryMethod)
        {
            var (code, detail) = await Outcome(call(client));
            if (code != expected(method)) wrong.Add($"{method}: {code} ({detail}), expected {expected(method)}");
            if (code != Ok) reasons.Add(detail);
        }
        Assert.Empty(wrong);
        Assert.Contains(reasons, r => r.Contains(reason, StringComparison.Ordinal));
        Assert.Equal(before, await Stored());
    }

    /// <summary>What the store holds (List without the daemon's clock).</summary>
    private async Task<ListResponse> Stored()
    {
        var list = await secured.Admin.ListAsync(new Empty(), cancellationToken: Ct);
        list.Now = null;
        return list;
    }

    private static async Task<(StatusCode Code, string Detail)> Outcome(Task call)
    {
        try
        {
            await call;
            return (Ok, "");
        }
        catch (RpcException e)
        {
            return (e.StatusCode, e.Status.Detail);
        }
    }
}
