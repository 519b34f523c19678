using System.Net;
using Merlin.Model;
using Merlin.Linux;
using Merlin.Testing;

namespace Merlin.Ipvs.Tests;

/// <summary>
/// Round trips through a real IPVS. The CI host's kernel has none, so these skip there (even with CI=true)
/// and run inside the qemu guest, as root, with the scheduler modules loaded and <c>lo</c> up (without a
/// local route table the kernel refuses destinations with EINVAL). The guest harness sets
/// MERLIN_REQUIRE_IPVS=1 so that a guest without IPVS fails instead of skipping. Each test starts from
/// an empty table: run this assembly alone in a throwaway network namespace or guest
/// (<c>tests/vm/ipvs-guest</c> runs every test with the trait Kernel=ipvs; the host's <c>dotnet test</c> leaves them out).
/// </summary>
[Trait("Kernel", "ipvs")]
[Collection(IpvsTableCollection.Name)]
public sealed class IpvsLiveTests : IDisposable
{
    private readonly IpvsClient _ipvs;

    public IpvsLiveTests()
    {
        Requires.Ipvs();
        Requires.Root();
        _ipvs = IpvsClient.Open();
        _ipvs.Flush();
    }

    public void Dispose()
    {
        _ipvs.Flush();
        _ipvs.Dispose();
    }

    private static ServiceKey Tcp(string address, ushort port) => ServiceKey.ForAddress(IPAddress.Parse(address), port, Protocol.Tcp);

    private static ServiceConfig Config(string scheduler, SchedulerFlags flags = SchedulerFlags.None, uint persistence = 0, byte netmask = 32, bool onePacket = false) =>
        new() { Scheduler = scheduler, Flags = flags, PersistenceTimeout = persistence, PersistenceNetmask = netmask, OnePacket = onePacket };

    private IpvsService Only(ServiceKey key) => Assert.Single(_ipvs.GetServices(TestContext.Current.CancellationToken), s => s.Key.Equals(key));

    [Fact]
    public void Info_ReportsVersionAndTableSize()
    {
        var info = _ipvs.GetInfo();
        Assert.True(info.Version >= 0x010200, info.VersionText);
        Assert.True(info.ConnectionTableSize > 0);
    }

    [Fact]
    public void Timeouts_SetAndReadBack_ThenRestored()
    {
        var before = _ipvs.GetTimeouts();
        try
        {
            _ipvs.SetTimeouts(new IpvsTimeouts(TimeSpan.FromSeconds(901), TimeSpan.FromSeconds(121), TimeSpan.FromSeconds(301)));
            Assert.Equal(new IpvsTimeouts(TimeSpan.FromSeconds(901), TimeSpan.FromSeconds(121), TimeSpan.FromSeconds(301)), _ipvs.GetTimeouts());
            _ipvs.SetTimeouts(new IpvsTimeouts(TimeSpan.Zero, TimeSpan.Zero, TimeSpan.FromSeconds(302)));
            Assert.Equal(TimeSpan.FromSeconds(901), _ipvs.GetTimeouts().Tcp); // zero left it alone
        }
        finally
        {
            _ipvs.SetTimeouts(before);
        }
    }

    [Fact]
    public void EveryScheduler_RoundTrips()
    {
        ushort port = 1000;
        foreach (var scheduler in Schedulers.All)
        {
            var key = Tcp("198.18.0.1", port++);
            _ipvs.NewService(key, Config(scheduler));
            Assert.Equal(new IpvsService(key, Config(scheduler)), _ipvs.GetService(key));
        }
        Assert.Equal(Schedulers.All, _ipvs.GetServices(TestContext.Current.CancellationToken).OrderBy(s => s.Key.Port).Select(s => s.Config.Scheduler));
    }

    [Theory]
    [InlineData("sh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2)] // sh-fallback + sh-port
    [InlineData("mh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2)] // mh-fallback + mh-port
    [InlineData("mh", SchedulerFlags.Flag2)]
    public void SchedulerFlags_RoundTrip(string scheduler, SchedulerFlags flags)
    {
        var key = Tcp("198.18.0.2", 80);
        _ipvs.NewService(key, Config(scheduler, flags));
        Assert.Equal(Config(scheduler, flags), Only(key).Config);
    }

    [Fact]
    public void Ipv6_Persistence_OnePacket_AndFirewallMarks_RoundTrip()
    {
        var services = new (ServiceKey Key, ServiceConfig Config)[]
        {
            (ServiceKey.ForAddress(IPAddress.Parse("2001:db8::1"), 443, Protocol.Tcp), Config("mh", SchedulerFlags.Flag2, persistence: 600, netmask: 64)),
            (ServiceKey.ForAddress(IPAddress.Parse("198.18.0.3"), 53, Protocol.Udp), Config("rr", onePacket: true)),
            (ServiceKey.ForAddress(IPAddress.Parse("198.18.0.3"), 80, Protocol.Sctp), Config("wlc", persistence: 300, netmask: 24)),
            (ServiceKey.ForFirewallMark(7, IpFamily.V4), Config("wrr", persistence: 60)),
            (ServiceKey.ForFirewallMark(8, IpFamily.V6), Config("sh", SchedulerFlags.Flag2, netmask: 128)),
        };
        foreach (var (key, config) in services) _ipvs.NewService(key, config);

        var read = _ipvs.GetServices(TestContext.Current.CancellationToken);
        Assert.Equal(services.Length, read.Count);
        foreach (var (key, config) in services) Assert.Equal(new IpvsService(key, config), Assert.Single(read, s => s.Key.Equals(key)));
    }

    [Fact]
    public void SetService_ChangesSchedulerAndFlags()
    {
        var key = Tcp("198.18.0.4", 80);
        _ipvs.NewService(key, Config("rr", persistence: 300));
        _ipvs.SetService(key, Config("mh", SchedulerFlags.Flag1));
        Assert.Equal(Config("mh", SchedulerFlags.Flag1), Only(key).Config);
    }

    [Fact]
    public void EveryForwardMethodAndTunnel_MaxWeight_Thresholds_RoundTrip()
    {
        var key = Tcp("198.18.0.5", 80);
        _ipvs.NewService(key, Config("wrr"));
        var destinations = new (RealServerKey Key, RealServerConfig Config)[]
        {
            (new(IPAddress.Parse("198.18.1.1"), 80), new() { Weight = int.MaxValue, Forward = ForwardMethod.Route }),
            (new(IPAddress.Parse("198.18.1.2"), 8080), new() { Weight = 0, Forward = ForwardMethod.Masq, UpperThreshold = 1000, LowerThreshold = 10 }),
            (new(IPAddress.Parse("198.18.1.3"), 80), new() { Weight = 3, Forward = ForwardMethod.Tunnel }),
            (new(IPAddress.Parse("198.18.1.4"), 80), new() { Weight = 4, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080, TunnelFlags = TunnelFlags.Csum }),
            (new(IPAddress.Parse("198.18.1.5"), 80), new() { Weight = 5, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6081, TunnelFlags = TunnelFlags.RemoteCsum }),
            (new(IPAddress.Parse("198.18.1.6"), 80), new() { Weight = 6, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gre, TunnelFlags = TunnelFlags.Csum }),
        };
        foreach (var (server, config) in destinations) _ipvs.NewDestination(key, server, config);

        var read = _ipvs.GetDestinations(key, TestContext.Current.CancellationToken);
        Assert.Equal(destinations.Length, read.Count);
        foreach (var (server, config) in destinations) Assert.Equal(new IpvsDestination(server, config), Assert.Single(read, d => d.Key.Equals(server)));
    }

    [Fact]
    public void Ipv4DestinationInAnIpv6Service_ByTunnel()
    {
        var key = ServiceKey.ForAddress(IPAddress.Parse("2001:db8::5"), 80, Protocol.Tcp);
        _ipvs.NewService(key, Config("rr", netmask: 128));
        var server = new RealServerKey(IPAddress.Parse("198.18.1.7"), 80);
        _ipvs.NewDestination(key, server, new RealServerConfig { Weight = 1, Forward = ForwardMethod.Tunnel });
        Assert.Equal(server, Assert.Single(_ipvs.GetDestinations(key, TestContext.Current.CancellationToken)).Key);
    }

    [Fact]
    public void SetAndDeleteDestination()
    {
        var key = Tcp("198.18.0.6", 80);
        var server = new RealServerKey(IPAddress.Parse("198.18.1.8"), 80);
        _ipvs.NewService(key, Config("wlc"));
        _ipvs.NewDestination(key, server, new RealServerConfig { Weight = 1 });
        _ipvs.SetDestination(key, server, new RealServerConfig { Weight = 7, UpperThreshold = 5 });
        Assert.Equal(new RealServerConfig { Weight = 7, UpperThreshold = 5 }, Assert.Single(_ipvs.GetDestinations(key, TestContext.Current.CancellationToken)).Config);
        _ipvs.DeleteDestination(key, server);
        Assert.Empty(_ipvs.GetDestinations(key, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void Refusals_CarryTheKernelsErrno()
    {
        var key = Tcp("198.18.0.7", 80);
        _ipvs.NewService(key, Config("rr"));
        Assert.Equal(Errno.EEXIST, Assert.Throws<NetlinkException>(() => _ipvs.NewService(key, Config("rr"))).Errno);
        Assert.Equal(Errno.ESRCH, Assert.Throws<NetlinkException>(() => _ipvs.DeleteService(Tcp("198.18.0.8", 80))).Errno);
        Assert.Equal(Errno.ENOENT, Assert.Throws<NetlinkException>(() =>
            _ipvs.DeleteDestination(key, new RealServerKey(IPAddress.Parse("198.18.1.9"), 80))).Errno);
        Assert.Null(_ipvs.GetService(Tcp("198.18.0.8", 80)));
        Assert.Empty(_ipvs.GetDestinations(Tcp("198.18.0.8", 80), TestContext.Current.CancellationToken));
    }

    [Fact]
    public void Batch_CreatesEverything_AndReportsTheOneDuplicate()
    {
        using var batch = _ipvs.CreateBatch();
        for (var s = 0; s < 50; s++)
        {
            var key = Tcp($"198.18.2.{s}", 80);
            batch.NewService(key, Config("mh", SchedulerFlags.Flag2));
            for (var r = 0; r < 10; r++)
                batch.NewDestination(key, new RealServerKey(IPAddress.Parse($"198.19.{s}.{r + 1}"), 80), new RealServerConfig { Weight = (uint)r + 1 });
        }
        batch.NewService(Tcp("198.18.2.0", 80), Config("rr")); // index 550: already there

        var result = _ipvs.Execute(batch, ct: TestContext.Current.CancellationToken);

        Assert.Equal(551, result.Count);
        Assert.Equal(3, result.Sends);
        Assert.Equal(550, Assert.Single(result.Failures).Index);
        Assert.Equal(Errno.EEXIST, result.Failures[0].Error.Errno);
        var services = _ipvs.GetServices(TestContext.Current.CancellationToken);
        Assert.Equal(50, services.Count);
        Assert.All(services, s => Assert.Equal(10, _ipvs.GetDestinations(s.Key, TestContext.Current.CancellationToken).Count));
    }

    [Fact]
    public void Flush_EmptiesTheTable()
    {
        _ipvs.NewService(Tcp("198.18.0.9", 80), Config("rr"));
        _ipvs.Flush();
        Assert.Empty(_ipvs.GetServices(TestContext.Current.CancellationToken));
    }

    [Fact]
    public void FreshService_ReadsZeroCounters_From64BitStats()
    {
        var key = Tcp("198.18.0.10", 80);
        _ipvs.NewService(key, Config("rr"));
        _ipvs.ZeroCounters(key);
        _ipvs.ZeroCounters();
        Assert.Equal(default, Only(key).Stats);
    }
}
