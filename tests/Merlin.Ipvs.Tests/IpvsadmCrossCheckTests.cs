using System.Diagnostics;
using System.Net;
using Merlin.Model;
using Merlin.Testing;

namespace Merlin.Ipvs.Tests;

/// <summary>
/// Our codec against an independent one: what ipvsadm (libipvs) creates, our client reads as the same
/// records; what our client creates, ipvsadm lists with the same settings. Same requirements as
/// <see cref="IpvsLiveTests"/>, plus ipvsadm 1.31+ (tunnel types) on PATH.
/// </summary>
public sealed class IpvsadmCrossCheckTests : IDisposable
{
    private readonly IpvsClient _ipvs;

    public IpvsadmCrossCheckTests()
    {
        Requires.Ipvs();
        Requires.Root();
        Requires.Command("ipvsadm", "apt-get install ipvsadm");
        _ipvs = IpvsClient.Open();
        _ipvs.Flush();
    }

    public void Dispose()
    {
        _ipvs.Flush();
        _ipvs.Dispose();
    }

    private static string Ipvsadm(string arguments)
    {
        var start = new ProcessStartInfo("ipvsadm", arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(30_000))
        {
            process.Kill();
            Assert.Fail($"ipvsadm {arguments}: no exit within 30 s");
        }
        Assert.True(process.ExitCode == 0, $"ipvsadm {arguments}: exit {process.ExitCode}: {error.Result}");
        return output.Result;
    }

    private static ServiceConfig Config(string scheduler, SchedulerFlags flags = SchedulerFlags.None, uint persistence = 0, byte netmask = 32, bool onePacket = false) =>
        new() { Scheduler = scheduler, Flags = flags, PersistenceTimeout = persistence, PersistenceNetmask = netmask, OnePacket = onePacket };

    [Fact]
    public void WhatIpvsadmCreates_WeReadTheSame()
    {
        Ipvsadm("-A -t 198.18.3.1:80 -s mh -b mh-port,mh-fallback -p 120 -M 255.255.255.0");
        Ipvsadm("-A -u [2001:db8::3]:53 -s sh -b sh-port -o");
        Ipvsadm("-A -f 9 -s wrr");
        Ipvsadm("-A -f 10 -6 -s rr -p 60");
        Ipvsadm("-a -t 198.18.3.1:80 -r 198.18.4.1:80 -g -w 2147483647");
        Ipvsadm("-a -t 198.18.3.1:80 -r 198.18.4.2:8080 -m -w 0 -x 1000 -y 10");
        Ipvsadm("-a -t 198.18.3.1:80 -r 198.18.4.3:80 -i -w 3");
        Ipvsadm("-a -t 198.18.3.1:80 -r 198.18.4.4:80 -i --tun-type gue --tun-port 6080 --tun-remcsum -w 4");
        Ipvsadm("-a -t 198.18.3.1:80 -r 198.18.4.5:80 -i --tun-type gre --tun-csum -w 5");

        var ct = TestContext.Current.CancellationToken;
        var services = _ipvs.GetServices(ct).ToDictionary(s => s.Key);
        var tcp = ServiceKey.ForAddress(IPAddress.Parse("198.18.3.1"), 80, Protocol.Tcp);
        Assert.Equal(Config("mh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2, 120, 24), services[tcp].Config);
        Assert.Equal(Config("sh", SchedulerFlags.Flag2, netmask: 128, onePacket: true),
            services[ServiceKey.ForAddress(IPAddress.Parse("2001:db8::3"), 53, Protocol.Udp)].Config);
        Assert.Equal(Config("wrr"), services[ServiceKey.ForFirewallMark(9, IpFamily.V4)].Config);
        Assert.Equal(Config("rr", persistence: 60, netmask: 128), services[ServiceKey.ForFirewallMark(10, IpFamily.V6)].Config);

        var destinations = _ipvs.GetDestinations(tcp, ct).ToDictionary(d => d.Key.ToString(), d => d.Config);
        Assert.Equal(new RealServerConfig { Weight = int.MaxValue, Forward = ForwardMethod.Route }, destinations["198.18.4.1:80"]);
        Assert.Equal(new RealServerConfig { Weight = 0, Forward = ForwardMethod.Masq, UpperThreshold = 1000, LowerThreshold = 10 }, destinations["198.18.4.2:8080"]);
        Assert.Equal(new RealServerConfig { Weight = 3, Forward = ForwardMethod.Tunnel }, destinations["198.18.4.3:80"]);
        Assert.Equal(new RealServerConfig { Weight = 4, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080, TunnelFlags = TunnelFlags.RemoteCsum },
            destinations["198.18.4.4:80"]);
        Assert.Equal(new RealServerConfig { Weight = 5, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gre, TunnelFlags = TunnelFlags.Csum },
            destinations["198.18.4.5:80"]);
    }

    [Fact]
    public void WhatWeCreate_IpvsadmListsTheSame()
    {
        var tcp = ServiceKey.ForAddress(IPAddress.Parse("198.18.3.2"), 443, Protocol.Tcp);
        _ipvs.NewService(tcp, Config("sh", SchedulerFlags.Flag1 | SchedulerFlags.Flag2, 300, 24));
        _ipvs.NewService(ServiceKey.ForAddress(IPAddress.Parse("2001:db8::4"), 80, Protocol.Sctp), Config("mh", SchedulerFlags.Flag2, 600, 64));
        _ipvs.NewService(ServiceKey.ForFirewallMark(11, IpFamily.V4), Config("wlc"));
        _ipvs.NewDestination(tcp, new RealServerKey(IPAddress.Parse("198.18.4.6"), 443), new RealServerConfig { Weight = int.MaxValue });
        _ipvs.NewDestination(tcp, new RealServerKey(IPAddress.Parse("198.18.4.7"), 8443),
            new RealServerConfig { Weight = 2, Forward = ForwardMethod.Masq, UpperThreshold = 50, LowerThreshold = 5 });
        _ipvs.NewDestination(tcp, new RealServerKey(IPAddress.Parse("198.18.4.8"), 443),
            new RealServerConfig { Weight = 1, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080, TunnelFlags = TunnelFlags.Csum });

        var saved = Ipvsadm("-S -n");
        var lines = saved.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        void Listed(string start, params string[] parts) =>
            Assert.True(lines.Any(l => l.StartsWith(start, StringComparison.Ordinal) && parts.All(p => l.Contains(p, StringComparison.Ordinal))),
                $"no line starting \"{start}\" with [{string.Join(", ", parts)}] in ipvsadm -S -n:\n{saved}");
        Listed("-A -t 198.18.3.2:443 ", "-s sh", "-b sh-fallback,sh-port", "-p 300", "-M 255.255.255.0");
        Listed("-A --sctp-service [2001:db8::4]:80 ", "-s mh", "-b mh-port", "-p 600", "-M 64");
        Listed("-A -f 11 ", "-s wlc");
        Listed("-a -t 198.18.3.2:443 -r 198.18.4.6:443 ", "-g", "-w 2147483647");
        Listed("-a -t 198.18.3.2:443 -r 198.18.4.7:8443 ", "-m", "-w 2");
        Listed("-a -t 198.18.3.2:443 -r 198.18.4.8:443 ", "-i", "-w 1", "--tun-type gue", "--tun-port 6080", "--tun-csum");

        // The save format has no thresholds; the listing with --thresholds does: "-> addr:port Uthreshold Lthreshold ActiveConn InActConn".
        var thresholds = Ipvsadm("-L -n --thresholds");
        var masq = thresholds.Split('\n').Single(l => l.Contains("198.18.4.7:8443", StringComparison.Ordinal));
        Assert.True(masq.Split(' ', StringSplitOptions.RemoveEmptyEntries) is ["->", _, "50", "5", ..], $"thresholds listing:\n{thresholds}");
    }
}
