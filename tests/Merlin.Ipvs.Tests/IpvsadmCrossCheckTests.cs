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
[Trait("Kernel", "ipvs")]
[Collection(IpvsTableCollection.Name)]
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

    private static string Ipvsadm(string arguments, string? input = null)
    {
        var start = new ProcessStartInfo("ipvsadm", arguments) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = input is not null };
        using var process = Process.Start(start)!;
        if (input is not null)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }
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
    public void EveryScheduler_IpvsadmAndWeAgree()
    {
        // One service per scheduler made by ipvsadm (a single ipvsadm -R), one per scheduler made by us, each with
        // a destination of its own weight and forwarding method: both tools must list all 26 the same way.
        // ipvsadm gives a real server that is not NAT the service's port (it cannot translate ports); the
        // kernel stores whatever port it is sent, so ours keep port 80.
        static ushort IpvsadmPort(int i, ushort servicePort) => i % 3 == 1 ? (ushort)80 : servicePort;
        ForwardMethod[] forwards = [ForwardMethod.Route, ForwardMethod.Masq, ForwardMethod.Tunnel];
        string[] flags = ["-g", "-m", "-i"];
        var restore = new System.Text.StringBuilder();
        for (var i = 0; i < Schedulers.All.Count; i++)
        {
            restore.Append($"-A -t 198.18.5.1:{2000 + i} -s {Schedulers.All[i]}\n");
            restore.Append($"-a -t 198.18.5.1:{2000 + i} -r 198.18.6.{i + 1}:80 {flags[i % 3]} -w {i + 1}\n");
        }
        Ipvsadm("-R", restore.ToString());
        for (var i = 0; i < Schedulers.All.Count; i++)
        {
            var key = ServiceKey.ForAddress(IPAddress.Parse("198.18.5.2"), (ushort)(3000 + i), Protocol.Tcp);
            _ipvs.NewService(key, Config(Schedulers.All[i]));
            _ipvs.NewDestination(key, new RealServerKey(IPAddress.Parse($"198.18.7.{i + 1}"), 80), new RealServerConfig { Weight = (uint)i + 1, Forward = forwards[i % 3] });
        }

        // What we read: the schedulers, weights and methods ipvsadm set, and ours.
        var ct = TestContext.Current.CancellationToken;
        var read = _ipvs.GetServices(ct).ToDictionary(s => s.Key);
        Assert.Equal(2 * Schedulers.All.Count, read.Count);
        for (var i = 0; i < Schedulers.All.Count; i++)
        {
            foreach (var (vip, port, server) in new[] { ("198.18.5.1", 2000 + i, $"198.18.6.{i + 1}"), ("198.18.5.2", 3000 + i, $"198.18.7.{i + 1}") })
            {
                var key = ServiceKey.ForAddress(IPAddress.Parse(vip), (ushort)port, Protocol.Tcp);
                Assert.Equal(Config(Schedulers.All[i]), read[key].Config);
                var dest = Assert.Single(_ipvs.GetDestinations(key, ct));
                var serverPort = port < 3000 ? IpvsadmPort(i, (ushort)port) : (ushort)80;
                Assert.Equal(new IpvsDestination(new RealServerKey(IPAddress.Parse(server), serverPort),
                    new RealServerConfig { Weight = (uint)i + 1, Forward = forwards[i % 3] }), dest);
            }
        }

        // What ipvsadm -Ln lists: "TCP  198.18.5.2:3000 rr" then "  -> 198.18.7.1:80  Route  1  0  0".
        var listing = Ipvsadm("-L -n");
        var services = new Dictionary<string, string>();
        var destinations = new Dictionary<string, (string Service, string Forward, string Weight)>();
        string? current = null;
        foreach (var line in listing.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f is ["TCP", var endpoint, var scheduler, ..])
            {
                services.Add(endpoint, scheduler);
                current = endpoint;
            }
            else if (f is ["->", var server, var forward, var weight, ..] && current is not null && server != "RemoteAddress:Port")
            {
                destinations.Add(server, (current, forward, weight));
            }
        }
        Assert.Equal(2 * Schedulers.All.Count, services.Count);
        string[] names = ["Route", "Masq", "Tunnel"];
        for (var i = 0; i < Schedulers.All.Count; i++)
        {
            foreach (var (service, server) in new[] { ($"198.18.5.1:{2000 + i}", $"198.18.6.{i + 1}:{IpvsadmPort(i, (ushort)(2000 + i))}"), ($"198.18.5.2:{3000 + i}", $"198.18.7.{i + 1}:80") })
            {
                Assert.True(services.TryGetValue(service, out var scheduler), $"ipvsadm -Ln lists no {service}:\n{listing}");
                Assert.Equal(Schedulers.All[i], scheduler);
                Assert.Equal((service, names[i % 3], $"{i + 1}"), destinations[server]);
            }
        }
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
