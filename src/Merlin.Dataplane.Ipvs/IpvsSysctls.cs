using System.Text;
using Merlin.Dataplane.Abstractions;
using Merlin.Linux;

namespace Merlin.Dataplane.Ipvs;

/// <summary>
/// The kernel settings the seed's IPVS deployment depends on (docs/operations.md explains each). They are
/// per network namespace and exist only once ip_vs is loaded. Read on every pass; written only when the
/// operator asked for it (<c>--manage-sysctls</c>), otherwise a drift is reported and left alone.
/// </summary>
public static class IpvsSysctls
{
    public sealed record Wanted(string Name, string Value, string Why);

    public static readonly IReadOnlyList<Wanted> Always =
    [
        new("net.ipv4.vs.sloppy_tcp", "1",
            "a node that takes over a VIP accepts mid-stream TCP packets of connections it never saw (failover without connection sync)"),
        new("net.ipv4.vs.schedule_icmp", "1",
            "ICMP errors (e.g. fragmentation needed) for flows the node did not see are scheduled to the right real server"),
        new("net.ipv4.vs.expire_nodest_conn", "1",
            "connections to a deleted real server are dropped at once instead of black-holing until they time out"),
        new("net.ipv4.vs.conn_reuse_mode", "2",
            "a new connection reusing the source port of one in FIN_WAIT/TIME_WAIT is rescheduled, so added servers take load and removed ones lose it"),
    ];

    /// <summary>Needed only when some real server is reached by masquerading (NAT): the LB routes the replies.</summary>
    public static readonly Wanted Forwarding = new("net.ipv4.ip_forward", "1", "masq (NAT) real servers need the LB to forward their replies");

    /// <summary>Reads each wanted sysctl, writing it first when <paramref name="manage"/> is set and it differs.</summary>
    public static IReadOnlyList<SysctlStatus> Check(bool manage, bool masq, string? networkNamespace, string procRoot = "/proc/sys")
    {
        var wanted = masq ? [.. Always, Forwarding] : Always;
        return wanted.Select(w =>
        {
            var path = Path.Combine(procRoot, w.Name.Replace('.', '/'));
            var have = Read(networkNamespace, path);
            if (manage && have is not null && have != w.Value)
            {
                try
                {
                    using (var file = NetworkNamespace.OpenFile(networkNamespace, path, FileMode.Truncate, FileAccess.Write))
                        RandomAccess.Write(file, Encoding.ASCII.GetBytes(w.Value + "\n"), 0);
                    have = Read(networkNamespace, path);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Reported as drift below; the pass goes on.
                }
            }
            return new SysctlStatus(w.Name, w.Value, have, manage, w.Why);
        }).ToList();
    }

    /// <summary>
    /// /proc/sys/net answers for the namespace the file was opened in: opened there (around open(2) only, see
    /// <see cref="NetworkNamespace"/>), read and written here.
    /// </summary>
    private static string? Read(string? networkNamespace, string path)
    {
        try
        {
            using var file = NetworkNamespace.OpenFile(networkNamespace, path, FileMode.Open, FileAccess.Read);
            var buffer = new byte[256]; // a sysctl value here is a number and a newline
            var length = 0;
            for (int n; length < buffer.Length && (n = RandomAccess.Read(file, buffer.AsSpan(length), length)) > 0;) length += n;
            return Encoding.ASCII.GetString(buffer, 0, length).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }
}
