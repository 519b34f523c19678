using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Ipvs;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Reconciler;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Dataplane.Ipvs.Tests;

/// <summary>
/// The dataplane against a real IPVS: in the qemu guest (tests/vm/ipvs-guest), each test in its own
/// network namespace, so its IPVS table and sysctls are its own. "Someone else" (an operator's
/// ipvsadm, a kube-proxy) is played by ipvsadm itself or by a second client in the same namespace.
/// </summary>
[Trait("Kernel", "ipvs")]
public sealed class IpvsDataplaneKernelTests : IDisposable
{
    private readonly ScratchNamespace _ns;
    private readonly TempDir _state = new("ipvs-state");
    private readonly IpvsClient _other;
    private readonly List<IpvsDataplane> _dataplanes = [];
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    public IpvsDataplaneKernelTests()
    {
        Requires.Ipvs();
        Requires.Root();
        _ns = new ScratchNamespace("ipvsdp");
        _other = IpvsClient.Open(new NetlinkSocketOptions { NetworkNamespace = _ns.Name });
    }

    public void Dispose()
    {
        foreach (var d in _dataplanes) d.Dispose();
        _other.Dispose();
        _ns.Dispose();
        _state.Dispose();
    }

    private IpvsDataplane NewDataplane(bool ownAll = false, int audit = 256, bool manageSysctls = false)
    {
        var d = new IpvsDataplane(new IpvsDataplaneOptions
        {
            NetworkNamespace = _ns.Name,
            OwnershipFile = _state.File("ipvs-owned-services"),
            OwnWholeTable = ownAll,
            AuditServicesPerPass = audit,
            AuditTimeBudget = TimeSpan.FromSeconds(30), // count-bound here, so a slow guest cannot change what a pass audits
            ManageSysctls = manageSysctls,
        }, NullLogger<IpvsDataplane>.Instance);
        _dataplanes.Add(d);
        return d;
    }

    private static ServiceKey Tcp(string ip, ushort port) => ServiceKey.ForAddress(IPAddress.Parse(ip), port, Protocol.Tcp);

    private static RealServerKey Server(string ip, ushort port) => new(IPAddress.Parse(ip), port);

    private static ServiceConfig Config(string scheduler = "mh", SchedulerFlags flags = SchedulerFlags.None, uint persistence = 0, bool v6 = false) =>
        new() { Scheduler = scheduler, Flags = flags, PersistenceTimeout = persistence, PersistenceNetmask = v6 ? (byte)128 : (byte)32 };

    private static RealServerConfig Route(uint weight) => new() { Weight = weight, Forward = ForwardMethod.Route };

    private static ServiceState Service(ServiceKey key, ServiceConfig config, params (RealServerKey Key, RealServerConfig Config)[] servers) =>
        new(key, config, servers.ToDictionary(s => s.Key, s => s.Config));

    /// <summary>A small desired table covering the shapes an operator uses.</summary>
    private static DataplaneState Desired(uint webWeight = 100) => new(
    [
        Service(Tcp("198.18.0.10", 80), Config("mh", SchedulerFlags.Flag2),
            (Server("198.18.1.1", 80), Route(webWeight)), (Server("198.18.1.2", 80), Route(100)), (Server("198.18.1.3", 80), Route(0))),
        Service(Tcp("198.18.0.10", 443), Config("sh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2),
            (Server("198.18.1.1", 443), Route(1)), (Server("198.18.1.2", 443), Route(int.MaxValue))),
        Service(ServiceKey.ForAddress(IPAddress.Parse("2001:db8::10"), 53, Protocol.Udp), Config("wrr", v6: true),
            (Server("2001:db8::1:1", 53), new RealServerConfig { Weight = 5, Forward = ForwardMethod.Masq })),
        Service(ServiceKey.ForFirewallMark(7, IpFamily.V4), Config("rr", persistence: 300),
            (Server("198.18.1.4", 0), new RealServerConfig { Weight = 1, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080 })),
    ]);

    /// <summary>One reconcile pass as the reconciler makes it; returns the plan it applied.</summary>
    private async Task<IReadOnlyList<Operation>> PassAsync(IpvsDataplane dataplane, DataplaneState desired)
    {
        var actual = await dataplane.ReadAsync(desired, Ct);
        var plan = Planner.Plan(desired, actual);
        var errors = await dataplane.ApplyAsync(plan, Ct);
        Assert.All(errors, e => Assert.Null(e));
        return plan;
    }

    [Fact]
    public async Task Reconcile_ProgramsTheKernel_AndASecondPassIsEmpty()
    {
        var dataplane = NewDataplane();
        var desired = Desired();

        var plan = await PassAsync(dataplane, desired);

        Assert.Equal(4 + 7, plan.Count); // four services, seven servers
        Assert.True(desired.SameAs(await dataplane.ReadAsync(desired, Ct)));
        Assert.Empty(await PassAsync(dataplane, desired));
        // What the kernel holds, read by another client, is what was asked for.
        var web = Assert.Single(_other.GetServices(Ct), s => s.Key == Tcp("198.18.0.10", 80));
        Assert.Equal("mh", web.Config.Scheduler);
        Assert.Equal(SchedulerFlags.Flag2, web.Config.Flags);
        var https = _other.GetDestinations(Tcp("198.18.0.10", 443), Ct);
        Assert.Equal((uint)int.MaxValue, Assert.Single(https, d => d.Key == Server("198.18.1.2", 443)).Config.Weight);
        // ipvsadm agrees.
        var saved = _ns.Exec("ipvsadm", "-Sn");
        Assert.Contains("-A -t 198.18.0.10:80 -s mh -b mh-port", saved);
        Assert.Contains("-A -t 198.18.0.10:443 -s sh -b sh-fallback,sh-port", saved);
        Assert.Contains("-A -f 7 -s rr -p 300", saved);
    }

    [Fact]
    public async Task AWeightChange_IsOneEditInPlace()
    {
        var dataplane = NewDataplane();
        await PassAsync(dataplane, Desired());
        var writes = dataplane.KernelWrites;

        var plan = await PassAsync(dataplane, Desired(webWeight: 0));

        var edit = Assert.Single(plan);
        Assert.IsType<UpdateServer>(edit);
        Assert.Equal(writes + 1, dataplane.KernelWrites);
        Assert.Equal(0u, Assert.Single(_other.GetDestinations(Tcp("198.18.0.10", 80), Ct), d => d.Key == Server("198.18.1.1", 80)).Config.Weight);
    }

    [Fact]
    public async Task ChangesBehindItsBack_AreRepairedAtTheNextPass()
    {
        var dataplane = NewDataplane();
        var desired = Desired();
        await PassAsync(dataplane, desired);

        // An operator with ipvsadm: edits a weight, deletes a server, adds a stray one, changes a scheduler, deletes a service.
        _ns.Exec("ipvsadm", "-e", "-t", "198.18.0.10:80", "-r", "198.18.1.2:80", "-g", "-w", "7");
        _ns.Exec("ipvsadm", "-d", "-t", "198.18.0.10:80", "-r", "198.18.1.3:80");
        _ns.Exec("ipvsadm", "-a", "-t", "198.18.0.10:443", "-r", "198.18.1.9:443", "-g", "-w", "3");
        _ns.Exec("ipvsadm", "-E", "-t", "198.18.0.10:443", "-s", "rr");
        _ns.Exec("ipvsadm", "-D", "-f", "7");

        var repair = await PassAsync(dataplane, desired);

        Assert.Equal(6, repair.Count); // update server, add server, delete server, update service, add service + its server
        Assert.True(desired.SameAs(await dataplane.ReadAsync(desired, Ct)));
        Assert.Empty(await PassAsync(dataplane, desired));
    }

    [Fact]
    public async Task AServiceItDoesNotOwn_IsLeftAlone_UnlessItOwnsTheWholeTable()
    {
        var foreign = Tcp("198.18.0.99", 8080);
        _other.NewService(foreign, Config("rr"));
        _other.NewDestination(foreign, Server("198.18.1.1", 8080), Route(1));

        var dataplane = NewDataplane();
        var actual = await dataplane.ReadAsync(Desired(), Ct);
        Assert.DoesNotContain(foreign, actual.Services.Keys);
        await PassAsync(dataplane, Desired());
        Assert.Contains(_other.GetServices(Ct), s => s.Key == foreign);
        Assert.Single(_other.GetDestinations(foreign, Ct));

        var owner = NewDataplane(ownAll: true);
        var plan = await PassAsync(owner, Desired());
        Assert.Equal([new DeleteServer(foreign, Server("198.18.1.1", 8080)), new DeleteService(foreign)], plan.ToList());
        Assert.DoesNotContain(_other.GetServices(Ct), s => s.Key == foreign);
    }

    [Fact]
    public async Task AHandMadeServiceThatEntersTheStore_IsAdoptedAndCorrected()
    {
        var web = Tcp("198.18.0.10", 80);
        _other.NewService(web, Config("rr"));
        _other.NewDestination(web, Server("198.18.1.1", 80), Route(9));
        _other.NewDestination(web, Server("198.18.1.8", 80), Route(1));

        var dataplane = NewDataplane();
        var plan = await PassAsync(dataplane, Desired());

        // Not deleted and re-added: its config is set, its known server edited, the stray one removed.
        Assert.DoesNotContain(plan, op => op is DeleteService or AddService && op.Service == web);
        Assert.Contains(plan, op => op is UpdateService && op.Service == web);
        Assert.Contains(new DeleteServer(web, Server("198.18.1.8", 80)), plan);
        Assert.True(Desired().SameAs(await dataplane.ReadAsync(Desired(), Ct)));
    }

    [Fact]
    public async Task ARestart_IssuesNoKernelWrites_AndStillKnowsWhatItCreated()
    {
        var first = NewDataplane();
        await PassAsync(first, Desired());
        _dataplanes.Remove(first);
        first.Dispose();

        var restarted = NewDataplane();
        Assert.Empty(await PassAsync(restarted, Desired()));
        Assert.Equal(0, restarted.KernelWrites);

        // A service deleted from the store while the daemon was down is still known to be ours, and goes.
        var withoutMark = new DataplaneState(Desired().Services.Values.Where(s => !s.Key.IsFirewallMark));
        var third = NewDataplane();
        var plan = await PassAsync(third, withoutMark);
        Assert.Contains(new DeleteService(ServiceKey.ForFirewallMark(7, IpFamily.V4)), plan);
        Assert.DoesNotContain(_other.GetServices(Ct), s => s.Key.IsFirewallMark);
        Assert.DoesNotContain(ServiceKey.ForFirewallMark(7, IpFamily.V4), third.Remembered);
    }

    [Fact]
    public async Task ALargeTable_IsAuditedInRotation_AndEveryTamperIsRepairedWithinOneRound()
    {
        var desired = new DataplaneState(Enumerable.Range(1, 10).Select(i =>
            Service(Tcp("198.18.0.10", (ushort)(1000 + i)), Config("rr"), (Server("198.18.1.1", 80), Route(1)))));
        var dataplane = NewDataplane(audit: 3);
        await PassAsync(dataplane, desired);
        var fullReads = dataplane.FullReads;

        foreach (var i in new[] { 1, 5, 10 }) _other.SetDestination(Tcp("198.18.0.10", (ushort)(1000 + i)), Server("198.18.1.1", 80), Route(50));

        var repaired = 0;
        for (var pass = 0; pass < 4; pass++) repaired += (await PassAsync(dataplane, desired)).Count; // ⌈10 / 3⌉ = 4 passes

        Assert.Equal(3, repaired);
        Assert.Equal(fullReads, dataplane.FullReads); // audits, not whole reads
        Assert.All(_other.GetServices(Ct), s => Assert.Equal(1u, Assert.Single(_other.GetDestinations(s.Key, Ct)).Config.Weight));
    }

    [Fact]
    public async Task AFailedWrite_IsReportedPerOperation_AndTheNextPassReadsTheTruth()
    {
        var dataplane = NewDataplane();
        var desired = Desired();
        await PassAsync(dataplane, desired);
        // Someone else deletes a service between our read and our write: our edit of it fails with ESRCH.
        var web = Tcp("198.18.0.10", 80);
        var actual = await dataplane.ReadAsync(desired, Ct);
        _ns.Exec("ipvsadm", "-D", "-t", "198.18.0.10:80");

        var errors = await dataplane.ApplyAsync(Planner.Plan(Desired(webWeight: 3), actual), Ct);

        var error = Assert.IsType<DataplaneException>(Assert.Single(errors));
        Assert.Contains("198.18.1.1:80", error.Message);
        var repair = await PassAsync(dataplane, Desired(webWeight: 3));
        Assert.Contains(new AddService(web, Desired().Services[web].Config), repair);
    }

    [Fact]
    public async Task Sysctls_DriftIsReported_AndSetWhenManaged()
    {
        var reporter = NewDataplane();
        await reporter.ReadAsync(Desired(), Ct);
        // A fresh namespace has the kernel's defaults: conn_reuse_mode 1, the others 0.
        Assert.Contains(reporter.Sysctls, s => s.Name == "net.ipv4.vs.conn_reuse_mode" && s.Have == "1" && s.Drifted);
        Assert.Contains(reporter.Warnings, w => w.Contains("net.ipv4.vs.sloppy_tcp is 0, want 1"));
        Assert.Equal("0", _ns.Exec("cat", "/proc/sys/net/ipv4/vs/sloppy_tcp").Trim());

        var manager = NewDataplane(manageSysctls: true);
        await manager.ReadAsync(Desired(), Ct); // the desired state has a masq server: ip_forward too
        Assert.All(manager.Sysctls, s => Assert.False(s.Drifted, $"{s.Name} is {s.Have}"));
        Assert.Empty(manager.Warnings);
        Assert.Equal("2", _ns.Exec("cat", "/proc/sys/net/ipv4/vs/conn_reuse_mode").Trim());
        Assert.Equal("1", _ns.Exec("cat", "/proc/sys/net/ipv4/ip_forward").Trim());
    }

    [Fact]
    public async Task Syncs_AndSysctls_LeaveNoThreadInTheNamespace()
    {
        // Sockets and sysctl files are made in the namespace around the native call only (NetworkNamespace).
        using var inside = new ManagedCodeInside(_ns);
        var dataplane = NewDataplane(manageSysctls: true);
        for (var i = 0; i < 5; i++)
        {
            await PassAsync(dataplane, Desired(webWeight: (uint)(100 + i)));
            await dataplane.ReadAsync(Desired(webWeight: (uint)(100 + i)), Ct);
        }
        Assert.All(dataplane.Sysctls, s => Assert.False(s.Drifted, $"{s.Name} is {s.Have}"));
        Assert.Empty(inside.Seen);
        Assert.Empty(ThreadNamespaces.In(_ns));
    }

    [Fact]
    public async Task Counters_CoverOwnedServicesAndTheirServers_Only()
    {
        _other.NewService(Tcp("198.18.0.99", 8080), Config("rr"));
        var dataplane = NewDataplane();
        await PassAsync(dataplane, Desired());

        var counters = await dataplane.ReadCountersAsync(Ct);

        Assert.Equal(Desired().Services.Keys.ToHashSet(), counters.Select(c => c.Service).ToHashSet());
        Assert.Equal(3, counters.Single(c => c.Service == Tcp("198.18.0.10", 80)).Servers.Count);
    }
}
