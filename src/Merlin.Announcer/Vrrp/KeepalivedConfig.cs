using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Announcer.Vrrp;

/// <summary>
/// Renders keepalived.conf for one VRRP instance. Pure: the same options and VIPs give the same text, so
/// "is a reload needed?" is a string comparison.
/// </summary>
/// <remarks>
/// The management VIP is the instance's <c>virtual_ipaddress</c>: it is the only address in the adverts, and
/// it is the same on both nodes by construction. The service VIPs are <c>virtual_ipaddress_excluded</c>:
/// keepalived adds and removes them with the same state changes (and sends gratuitous ARP / unsolicited NA
/// for them on takeover), but leaves them out of the adverts. A VRRPv2/v3 receiver compares the advert's
/// address list with its own; while two daemons briefly disagree about the service set (one has read a new
/// service from the store and the other not yet), adverts carrying service VIPs could be refused and the
/// BACKUP would take over while the MASTER still runs. Keeping them out also lifts the limit on how many
/// addresses fit in one advert.
///
/// There is no <c>nopreempt</c>: merlin implements it, so that it can apply after the first election only.
/// The instance tracks a file (<see cref="VrrpOptions.PriorityFilePath"/>) whose number keepalived adds to the
/// priority whenever the file changes, without a reload: merlin raises a MASTER that must keep the VIPs to 254,
/// which no returning node can preempt, and writes -254 (FAULT: the VIPs are released) while the node is
/// drained. <c>notify_priority_changes</c> reports such changes on the FIFO with the current state.
/// </remarks>
public static class KeepalivedConfig
{
    public static string Render(VrrpOptions o, IEnumerable<IPAddress> serviceVips)
    {
        var vips = Normalize(serviceVips, o.ManagementVip);
        var sb = new StringBuilder();
        sb.Append("# Rendered by merlin (--announcer vrrp); the service VIPs are updated while this node is MASTER.\n");
        sb.Append("global_defs {\n");
        sb.Append($"    notify_fifo {o.FifoPath}\n");
        sb.Append("}\n\n");
        sb.Append($"track_file {o.TrackFileName} {{\n");
        sb.Append($"    file \"{o.PriorityFilePath}\"\n");
        sb.Append("    weight 1\n");
        sb.Append("}\n\n");
        sb.Append($"vrrp_instance {o.InstanceName} {{\n");
        sb.Append("    state BACKUP\n");
        sb.Append($"    interface {o.Interface}\n");
        sb.Append($"    virtual_router_id {o.RouterId.ToString(CultureInfo.InvariantCulture)}\n");
        sb.Append($"    priority {o.Priority.ToString(CultureInfo.InvariantCulture)}\n");
        sb.Append("    version 3\n");
        sb.Append($"    advert_int {Seconds(o.AdvertInterval)}\n");
        sb.Append("    notify_priority_changes true\n");
        sb.Append("    track_file {\n");
        sb.Append($"        {o.TrackFileName}\n");
        sb.Append("    }\n");
        sb.Append("    unicast_peer {\n");
        foreach (var peer in o.Peers) sb.Append($"        {peer}\n");
        sb.Append("    }\n");
        sb.Append("    virtual_ipaddress {\n");
        sb.Append($"        {Cidr(o.ManagementVip)} dev {o.Interface}\n");
        sb.Append("    }\n");
        if (vips.Count > 0)
        {
            sb.Append("    virtual_ipaddress_excluded {\n");
            foreach (var vip in vips) sb.Append($"        {Cidr(vip)} dev {o.Interface}\n");
            sb.Append("    }\n");
        }
        sb.Append("}\n");
        return sb.ToString();
    }

    /// <summary>
    /// The configuration without its service VIPs: what a running keepalived must have been started with for a
    /// new daemon to adopt it (the service VIPs it changes itself, by a reload while MASTER).
    /// </summary>
    public static string Settings(string text)
    {
        const string open = "    virtual_ipaddress_excluded {\n";
        var start = text.IndexOf(open, StringComparison.Ordinal);
        if (start < 0) return text;
        var end = text.IndexOf("    }\n", start + open.Length, StringComparison.Ordinal);
        return end < 0 ? text : text[..start] + text[(end + "    }\n".Length)..];
    }

    /// <summary>The service VIPs a rendered configuration lists (to know what an adopted keepalived holds).</summary>
    public static IReadOnlyList<IPAddress> ServiceVips(string text)
    {
        var vips = new List<IPAddress>();
        var inside = false;
        foreach (var line in text.Split('\n'))
        {
            if (line == "    virtual_ipaddress_excluded {") inside = true;
            else if (inside && line == "    }") break;
            else if (inside && line.Trim().Split('/')[0] is var a && IPAddress.TryParse(a, out var vip)) vips.Add(vip);
        }
        return VipSet.Normalize(vips);
    }

    /// <summary>The service VIPs as rendered: distinct, IPv4 before IPv6, in address order, without the management VIP.</summary>
    public static IReadOnlyList<IPAddress> Normalize(IEnumerable<IPAddress> vips, IPAddress managementVip) =>
        VipSet.Normalize(vips).Where(v => !v.Equals(managementVip)).ToList();

    private static string Cidr(IPAddress a) => a.AddressFamily == AddressFamily.InterNetworkV6 ? $"{a}/128" : $"{a}/32";

    private static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("0.##", CultureInfo.InvariantCulture);
}
