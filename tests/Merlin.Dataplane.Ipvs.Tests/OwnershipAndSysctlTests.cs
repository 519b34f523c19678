using System.Net;
using Merlin.Model;
using Merlin.Testing;

namespace Merlin.Dataplane.Ipvs.Tests;

public sealed class OwnedServicesTests
{
    public static TheoryData<string> Keys => ["tcp 198.18.0.10 80", "udp 2001:db8::1 53", "sctp 198.18.0.11 9", "fwmark ipv4 7", "fwmark ipv6 4294967295"];

    [Theory]
    [MemberData(nameof(Keys))]
    public void Format_And_Parse_RoundTrip(string line)
    {
        Assert.True(OwnedServices.TryParse(line, out var key));
        Assert.Equal(line, OwnedServices.Format(key));
    }

    [Theory]
    [InlineData("tcp 198.18.0.10")]
    [InlineData("tcp nonsense 80")]
    [InlineData("tcp 198.18.0.10 65536")]
    [InlineData("icmp 198.18.0.10 80")]
    [InlineData("fwmark ipv4 0")]
    [InlineData("fwmark ipv5 1")]
    public void Parse_RefusesMalformedLines(string line) => Assert.False(OwnedServices.TryParse(line, out _));

    [Fact]
    public void Save_Then_Load_KeepsTheSet_AndSkipsBadLines()
    {
        using var dir = new TempDir("owned");
        var path = dir.File("state/ipvs-owned-services");
        var web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
        var mark = ServiceKey.ForFirewallMark(7, IpFamily.V6);
        var owned = new OwnedServices(path);
        owned.Add(web);
        owned.Add(mark);
        Assert.Null(owned.Save());
        File.AppendAllText(path, "garbage line\n");

        var warnings = new List<string>();
        var loaded = new OwnedServices(path, warnings.Add);

        Assert.True(loaded.Contains(web));
        Assert.True(loaded.Contains(mark));
        Assert.Equal(2, loaded.Count);
        Assert.Contains(warnings, w => w.Contains("garbage line"));
    }

    [Fact]
    public void Save_ToAnUnwritablePlace_ReportsInsteadOfThrowing()
    {
        using var dir = new TempDir("owned");
        File.WriteAllText(dir.File("file"), "");
        var owned = new OwnedServices(dir.File("file/ipvs-owned-services")); // a directory under a file
        owned.Add(ServiceKey.ForFirewallMark(1, IpFamily.V4));
        Assert.NotNull(owned.Save());
    }
}

public sealed class IpvsSysctlsTests
{
    private static TempDir FakeProc(string conntReuse = "1", string sloppy = "0")
    {
        var dir = new TempDir("proc");
        void Put(string name, string value)
        {
            var path = Path.Combine(dir.Path, name.Replace('.', '/'));
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, value + "\n");
        }
        Put("net.ipv4.vs.sloppy_tcp", sloppy);
        Put("net.ipv4.vs.schedule_icmp", "1");
        Put("net.ipv4.vs.expire_nodest_conn", "0");
        Put("net.ipv4.vs.conn_reuse_mode", conntReuse);
        Put("net.ipv4.ip_forward", "0");
        return dir;
    }

    [Fact]
    public void Unmanaged_ReportsDrift_AndWritesNothing()
    {
        using var proc = FakeProc();
        var status = IpvsSysctls.Check(manage: false, masq: false, networkNamespace: null, procRoot: proc.Path);

        Assert.Equal(["net.ipv4.vs.sloppy_tcp", "net.ipv4.vs.schedule_icmp", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.conn_reuse_mode"], status.Select(s => s.Name));
        Assert.Equal(["net.ipv4.vs.sloppy_tcp", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.conn_reuse_mode"], status.Where(s => s.Drifted).Select(s => s.Name));
        Assert.Equal("0", File.ReadAllText(Path.Combine(proc.Path, "net/ipv4/vs/sloppy_tcp")).Trim());
    }

    [Fact]
    public void Managed_SetsWhatDrifted()
    {
        using var proc = FakeProc();
        var status = IpvsSysctls.Check(manage: true, masq: false, networkNamespace: null, procRoot: proc.Path);

        Assert.All(status, s => Assert.False(s.Drifted));
        Assert.Equal("2", File.ReadAllText(Path.Combine(proc.Path, "net/ipv4/vs/conn_reuse_mode")).Trim());
        Assert.Equal("0", File.ReadAllText(Path.Combine(proc.Path, "net/ipv4/ip_forward")).Trim()); // no masq server: not needed
    }

    [Fact]
    public void Masq_AddsIpForward()
    {
        using var proc = FakeProc();
        var status = IpvsSysctls.Check(manage: true, masq: true, networkNamespace: null, procRoot: proc.Path);

        Assert.Contains(status, s => s.Name == "net.ipv4.ip_forward" && s.Have == "1");
    }

    [Fact]
    public void Missing_IsReportedAsUnreadable()
    {
        using var proc = new TempDir("proc"); // ip_vs not loaded: no net/ipv4/vs at all
        var status = IpvsSysctls.Check(manage: true, masq: false, networkNamespace: null, procRoot: proc.Path);

        Assert.All(status, s => { Assert.Null(s.Have); Assert.True(s.Drifted); });
    }

    [Fact]
    public void InANamespace_TheNamespacesOwnAreReadAndSet_WithNoManagedCodeInThere()
    {
        // Without ip_vs (this host) only ip_forward exists, so the vs.* files are not found: the errors are
        // raised, like all managed code, outside the namespace. The guest suite sets the vs.* ones too
        // (IpvsDataplaneKernelTests).
        Requires.Root();
        using var ns = new ScratchNamespace("sysctl");
        using var inside = new ManagedCodeInside(ns);
        var host = File.ReadAllText("/proc/sys/net/ipv4/ip_forward").Trim();
        var status = IpvsSysctls.Check(manage: true, masq: true, networkNamespace: ns.Name);

        Assert.Equal("1", Assert.Single(status, s => s.Name == "net.ipv4.ip_forward").Have);
        Assert.Equal("1", ns.Exec("cat", "/proc/sys/net/ipv4/ip_forward").Trim());
        Assert.Equal(host, File.ReadAllText("/proc/sys/net/ipv4/ip_forward").Trim());
        Assert.Empty(inside.Seen);
        Assert.Empty(ThreadNamespaces.In(ns));
    }
}
