using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Merlin.Lab;

/// <summary>How <see cref="Lab.AssignVipAsync"/> made the gateway's neighbour cache follow a moved VIP.</summary>
public enum VipAnnouncement
{
    /// <summary>The gateway had no entry to update (it resolves the VIP afresh on its next packet).</summary>
    NothingCached,
    /// <summary>Gratuitous ARP (<c>arping -U</c>) / unsolicited neighbour advertisement updated it.</summary>
    Announced,
    /// <summary>No announcement arrived in time (or arping is missing): the gateway's entries were deleted.</summary>
    Flushed,
}

public sealed partial class Lab
{
    /// <summary>The load balancer whose interface holds the VIPs (after <see cref="AssignVipAsync"/>), or null.</summary>
    public LabHost? VipHolder { get; private set; }

    /// <summary>
    /// Moves every VIP onto <paramref name="lb"/>'s interface (as /32 and /128; removed from every other load
    /// balancer, and any VIP route on the gateway removed), announced the way a failover is: a gratuitous ARP
    /// (<c>arping -U</c>, Debian's iputils-arping) for IPv4, and for IPv6 the unsolicited neighbour
    /// advertisement the kernel sends when the address is added (load balancers have ndisc_notify=1).
    /// Returns once the gateway's (client's or router's) neighbour entries for the VIPs that pointed at another
    /// MAC point at <paramref name="lb"/>'s; if that does not happen within 2 s (or arping is not installed) it
    /// deletes those entries instead, and says so.
    /// </summary>
    public async Task<VipAnnouncement> AssignVipAsync(LabHost lb, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        if (lb.Lab != this || lb.Role != LabRole.LoadBalancer) throw new ArgumentException($"{lb.Name} is not a load balancer of this lab", nameof(lb));
        var stale = await StaleGatewayEntriesAsync(lb);
        await Task.WhenAll(LoadBalancers.Where(h => h != lb).Select(h => h.IpBatchAsync(Vips.Select(v => $"addr del {Cidr(v)} dev {h.Interface}"), ignoreErrors: true)));
        await Gateway.IpBatchAsync(Vips.Select(v => $"route del {Cidr(v)}"), ignoreErrors: true);
        await lb.IpBatchAsync(Vips.Select(v => $"addr replace {Cidr(v)} dev {lb.Interface}"));
        VipHolder = lb;
        return await AnnounceAsync(lb, stale, ct);
    }

    /// <summary>
    /// Routes the VIPs on the gateway (the client, or the router) via <paramref name="lb"/>'s own address —
    /// the other way to bring VIP traffic to a load balancer that does not hold the VIP itself.
    /// </summary>
    public async Task RouteVipViaAsync(LabHost lb)
    {
        ThrowIfDisposed();
        if (lb.Lab != this || lb.Role != LabRole.LoadBalancer) throw new ArgumentException($"{lb.Name} is not a load balancer of this lab", nameof(lb));
        var lines = VipsV4.Select(v => $"route replace {Cidr(v)} via {lb.Address}").ToList();
        if (lb.Address6 is not null) lines.AddRange(VipsV6.Select(v => $"route replace {Cidr(v)} via {lb.Address6}"));
        await Gateway.IpBatchAsync(lines);
    }

    /// <summary>Removes the VIPs from every load balancer and any VIP route from the gateway.</summary>
    public async Task ClearVipAsync()
    {
        ThrowIfDisposed();
        await Task.WhenAll(LoadBalancers.Select(h => h.IpBatchAsync(Vips.Select(v => $"addr del {Cidr(v)} dev {h.Interface}"), ignoreErrors: true)));
        await Gateway.IpBatchAsync(Vips.Select(v => $"route del {Cidr(v)}"), ignoreErrors: true);
        VipHolder = null;
    }

    private static string Cidr(IPAddress a) => a.AddressFamily == AddressFamily.InterNetworkV6 ? $"{a}/128" : $"{a}/32";

    private async Task<List<IPAddress>> StaleGatewayEntriesAsync(LabHost lb)
    {
        var stale = new List<IPAddress>();
        foreach (var v in Vips)
        {
            if (await Gateway.GetNeighbourAsync(v) is { Mac: not null } n && !string.Equals(n.Mac, lb.Mac, StringComparison.OrdinalIgnoreCase)) stale.Add(v);
        }
        return stale;
    }

    private async Task<VipAnnouncement> AnnounceAsync(LabHost lb, List<IPAddress> stale, CancellationToken ct)
    {
        if (stale.Count == 0) return VipAnnouncement.NothingCached;
        var arping = Merlin.Testing.Requires.FindOnPath("arping");
        var v4 = stale.Where(v => v.AddressFamily == AddressFamily.InterNetwork).ToList();
        if (arping is not null || v4.Count == 0)
        {
            foreach (var v in v4)
            {
                // arping -U sends at once, then idles for its 1 s interval: it is not waited for, only reaped
                // (or killed at teardown).
                var p = lb.Start(arping!, "-q", "-U", "-c", "1", "-I", lb.Interface, v.ToString());
                _ = p.WaitForExitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => p.DisposeAsync().AsTask(), TaskScheduler.Default);
            }
            var clock = Stopwatch.StartNew();
            while (true)
            {
                if ((await StaleGatewayEntriesAsync(lb)).Intersect(stale).Any() is false) return VipAnnouncement.Announced;
                if (clock.Elapsed > TimeSpan.FromSeconds(2)) break;
                await Task.Delay(10, ct);
            }
        }
        var dev = Gateway.Interface;
        await Gateway.IpBatchAsync(stale.Select(v => $"neigh del {v} dev {dev}"), ignoreErrors: true);
        return VipAnnouncement.Flushed;
    }
}
