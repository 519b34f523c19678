using System.Net;
using System.Text.Json;
using Merlin.Lab.Server;

namespace Merlin.Lab.Tests;

/// <summary>Addresses, MACs, sysctls, VIP placement and the routed variant are what the lab promises.</summary>
public sealed class LabTopologyTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Hosts_report_the_interfaces_the_kernel_has()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 3, ExtraHosts = ["etcd"] }, Ct);
        Assert.Equal(["client", "lb1", "lb2", "rs1", "rs2", "rs3", "etcd"], lab.Hosts.Select(h => h.Name));
        Assert.All(lab.Hosts, h => Assert.StartsWith(lab.Prefix, h.Namespace));
        Assert.Equal(IPAddress.Parse("198.18.0.2"), lab.Client.Address);
        Assert.Equal(IPAddress.Parse("198.18.0.12"), lab["lb2"].Address);
        Assert.Equal(IPAddress.Parse("2001:db8::53"), lab["rs3"].Address6);
        Assert.Equal(IPAddress.Parse("198.18.0.200"), lab["etcd"].Address);
        Assert.Equal(IPAddress.Parse("198.18.0.100"), lab.Vip);
        Assert.Equal(IPAddress.Parse("2001:db8::100"), lab.Vip6);

        var macs = new HashSet<string>();
        foreach (var h in lab.Hosts)
        {
            Assert.Equal("eth0", h.Interface);
            // Read back independently of the lab's own bookkeeping.
            var link = await h.ExecAsync("ip", "-j", "link", "show", "dev", "eth0");
            using var doc = JsonDocument.Parse(link.StandardOutput);
            Assert.Equal(doc.RootElement[0].GetProperty("address").GetString(), h.Mac);
            Assert.Matches("^([0-9a-f]{2}:){5}[0-9a-f]{2}$", h.Mac);
            Assert.True(macs.Add(h.Mac), $"duplicate MAC {h.Mac}");
            var addr = (await h.ExecAsync("ip", "-br", "addr", "show", "dev", "eth0")).StandardOutput;
            Assert.Contains($"{h.Address}/24", addr);
            Assert.Contains($"{h.Address6}/64", addr);
        }
    }

    [Fact]
    public async Task Real_servers_hold_the_VIP_on_lo_without_answering_for_it()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { RealServers = 2, VipCount = 2 }, Ct);
        Assert.Equal(["198.18.0.100", "198.18.0.101", "2001:db8::100", "2001:db8::101"], lab.Vips.Select(v => v.ToString()));
        foreach (var rs in lab.RealServers)
        {
            var lo = (await rs.ExecAsync("ip", "-br", "addr", "show", "dev", "lo")).StandardOutput;
            foreach (var v in lab.VipsV4) Assert.Contains($"{v}/32", lo);
            foreach (var v in lab.VipsV6) Assert.Contains($"{v}/128", lo);
            Assert.Equal("1", await rs.GetSysctlAsync("net.ipv4.conf.all.arp_ignore"));
            Assert.Equal("2", await rs.GetSysctlAsync("net.ipv4.conf.all.arp_announce"));
        }
        // The load balancer forwards; the client does not.
        Assert.Equal("1", await lab["lb1"].GetSysctlAsync("net.ipv4.ip_forward"));
        Assert.Equal("0", await lab.Client.GetSysctlAsync("net.ipv4.ip_forward"));
        Assert.Equal("0", await lab["lb1"].GetSysctlAsync("net.ipv4.conf.eth0.send_redirects"));

        await lab.StartServersAsync(ct: Ct);
        // Nobody answers ARP / neighbour solicitations for the VIP: without a load balancer it is unreachable.
        foreach (var ipv6 in new[] { false, true })
        {
            var r = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.HttpPort, ipv6), new LabRequestOptions { Count = 1, Timeout = TimeSpan.FromMilliseconds(500) }, Ct);
            Assert.True(r.Successes == 0, ReportJson.Write(r));
        }
    }

    [Fact]
    public async Task Assigning_the_VIP_moves_it_and_the_client_follows_at_once()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 0 }, Ct);
        var (lb1, lb2) = (lab["lb1"], lab["lb2"]);
        // Stand-ins for a dataplane: whoever holds the VIP answers it with its own name.
        await lb1.StartServerAsync(ct: Ct);
        await lb2.StartServerAsync(ct: Ct);

        Assert.Equal(VipAnnouncement.NothingCached, await lab.AssignVipAsync(lb1, Ct));
        Assert.Same(lb1, lab.VipHolder);
        await AssertVipAnsweredBy("lb1");

        // The client has lb1's MAC cached for both VIPs now; the move must replace it without waiting for
        // the cache to expire.
        Assert.Equal(lb1.Mac, (await lab.Client.GetNeighbourAsync(lab.Vip))?.Mac);
        Assert.Equal(lb1.Mac, (await lab.Client.GetNeighbourAsync(lab.Vip6!))?.Mac);
        var how = await lab.AssignVipAsync(lb2, Ct);
        Assert.Equal(VipAnnouncement.Announced, how);
        Assert.Equal(lb2.Mac, (await lab.Client.GetNeighbourAsync(lab.Vip))?.Mac);
        Assert.Equal(lb2.Mac, (await lab.Client.GetNeighbourAsync(lab.Vip6!))?.Mac);
        Assert.DoesNotContain("198.18.0.100", (await lb1.ExecAsync("ip", "-br", "addr")).StandardOutput);
        await AssertVipAnsweredBy("lb2");

        await lab.ClearVipAsync();
        Assert.Null(lab.VipHolder);
        Assert.DoesNotContain("198.18.0.100", (await lb2.ExecAsync("ip", "-br", "addr")).StandardOutput);

        async Task AssertVipAnsweredBy(string name)
        {
            foreach (var ipv6 in new[] { false, true })
            {
                var r = await lab.Client.HttpAsync(lab.VipEndpoint(Lab.HttpPort, ipv6), new LabRequestOptions { Count = 5 }, Ct);
                Assert.True(r.Successes == 5 && r.PerServer.Keys.Single() == name, $"ipv6={ipv6}: {ReportJson.Write(r)}");
            }
        }
    }

    [Fact]
    public async Task Routing_the_VIP_via_a_load_balancer_puts_the_route_on_the_client()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 0 }, Ct);
        await lab.RouteVipViaAsync(lab["lb2"]);
        Assert.Contains("via 198.18.0.12", (await lab.Client.ExecAsync("ip", "route", "get", "198.18.0.100")).StandardOutput);
        Assert.Contains("via 2001:db8::12", (await lab.Client.ExecAsync("ip", "route", "get", "2001:db8::100")).StandardOutput);
        await lab.RouteVipViaAsync(lab["lb1"]);
        Assert.Contains("via 198.18.0.11", (await lab.Client.ExecAsync("ip", "route", "get", "198.18.0.100")).StandardOutput);
    }

    [Fact]
    public async Task A_routed_client_reaches_the_LAN_through_the_router()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { Router = true, LoadBalancers = 2, RealServers = 2 }, Ct);
        Assert.NotNull(lab.Router);
        Assert.Same(lab.Router, lab.Gateway);
        Assert.Equal(IPAddress.Parse("198.18.1.2"), lab.Client.Address);
        Assert.Equal(IPAddress.Parse("2001:db8:1::2"), lab.Client.Address6);
        Assert.Equal(2, lab.Router!.Interfaces.Count);
        Assert.Equal("198.18.1.0/24", lab.Router.Interfaces[1].Network);

        await lab.StartServersAsync(ct: Ct);
        foreach (var ipv6 in new[] { false, true })
        {
            var r = await lab.Client.HttpAsync(lab["rs2"].Endpoint(Lab.HttpPort, ipv6), new LabRequestOptions { Count = 5 }, Ct);
            Assert.True(r.Successes == 5, ReportJson.Write(r));
        }
        await lab.RouteVipViaAsync(lab["lb1"]);
        Assert.Contains("via 198.18.0.11", (await lab.Router.ExecAsync("ip", "route", "get", "198.18.0.100")).StandardOutput);
    }

    [Fact]
    public async Task A_lab_without_IPv6_has_none()
    {
        Lab.Require();
        await using var lab = await Lab.CreateAsync(new LabOptions { IPv6 = false, RealServers = 1 }, Ct);
        Assert.Null(lab.Vip6);
        Assert.Null(lab["rs1"].Address6);
        Assert.Equal("1", await lab["rs1"].GetSysctlAsync("net.ipv6.conf.eth0.disable_ipv6"));
        await lab["rs1"].StartServerAsync(ct: Ct);
        Assert.Equal(3, (await lab.Client.HttpAsync(lab["rs1"].Endpoint(Lab.HttpPort), new LabRequestOptions { Count = 3 }, Ct)).Successes);
    }
}
