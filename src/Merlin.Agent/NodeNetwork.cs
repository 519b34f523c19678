using System.Net;
using System.Net.Sockets;
using Merlin.Linux;

namespace Merlin.Agent;

/// <summary>What the agent changes on its node: addresses on the loopback device and IPv4 sysctls.</summary>
public interface INodeNetwork
{
    /// <summary>The addresses on <c>lo</c> now.</summary>
    Task<IReadOnlySet<IPAddress>> LoopbackAddressesAsync(CancellationToken ct);

    /// <summary>Adds a VIP to <c>lo</c> as a host route (/32 or /128); already present is not an error.</summary>
    Task AddLoopbackAsync(IPAddress vip, CancellationToken ct);

    /// <summary>Removes a VIP from <c>lo</c>; already absent is not an error.</summary>
    Task RemoveLoopbackAsync(IPAddress vip, CancellationToken ct);

    /// <summary>A sysctl's value, named as under /proc/sys with dots (<c>net.ipv4.conf.all.arp_ignore</c>).</summary>
    Task<string> ReadSysctlAsync(string name, CancellationToken ct);

    Task WriteSysctlAsync(string name, string value, CancellationToken ct);
}

/// <summary>A node change that failed; the message names what and why.</summary>
public sealed class NodeNetworkException(string message) : Exception(message);

/// <summary>
/// The node's network namespace (its own, or a named one for tests): rtnetlink for the addresses on
/// <c>lo</c>, /proc/sys for sysctls. No <c>ip</c> process: what iproute2 would send is sent directly.
/// </summary>
public sealed class LinuxNodeNetwork(string? networkNamespace = null) : INodeNetwork
{
    private const string Loopback = "lo";

    public Task<IReadOnlySet<IPAddress>> LoopbackAddressesAsync(CancellationToken ct) =>
        Task.FromResult<IReadOnlySet<IPAddress>>(Route("list the addresses on lo", (client, lo) =>
            Rtnetlink.Addresses(client, lo).Select(a => a.Address).ToHashSet()));

    public async Task AddLoopbackAsync(IPAddress vip, CancellationToken ct)
    {
        if ((await LoopbackAddressesAsync(ct)).Contains(vip)) return;
        // nodad: the address must answer at once; duplicate detection on lo only delays it.
        var v6 = vip.AddressFamily == AddressFamily.InterNetworkV6;
        Route($"add {vip}/{HostPrefix(vip)} to lo", (client, lo) =>
        {
            using var buffer = new NetlinkBuffer();
            Rtnetlink.WriteAddAddress(new NetlinkWriter(buffer), lo, vip, HostPrefix(vip), noDuplicateDetection: v6);
            try { client.Execute(buffer, $"RTM_NEWADDR {vip}"); }
            catch (NetlinkException e) when (e.Errno == Errno.EEXIST) { } // added meanwhile
            return 0;
        });
    }

    public async Task RemoveLoopbackAsync(IPAddress vip, CancellationToken ct)
    {
        if (!(await LoopbackAddressesAsync(ct)).Contains(vip)) return;
        Route($"remove {vip}/{HostPrefix(vip)} from lo", (client, lo) =>
        {
            using var buffer = new NetlinkBuffer();
            Rtnetlink.WriteDeleteAddress(new NetlinkWriter(buffer), lo, vip, HostPrefix(vip));
            client.Execute(buffer, $"RTM_DELADDR {vip}");
            return 0;
        });
    }

    public async Task<string> ReadSysctlAsync(string name, CancellationToken ct)
    {
        try
        {
            using var file = new FileStream(NetworkNamespace.OpenFile(networkNamespace, SysctlPath(name), FileMode.Open, FileAccess.Read), FileAccess.Read, bufferSize: 0);
            using var reader = new StreamReader(file);
            return (await reader.ReadToEndAsync(ct)).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NodeNetworkException($"cannot read sysctl {name}: {e.Message}");
        }
    }

    public async Task WriteSysctlAsync(string name, string value, CancellationToken ct)
    {
        try
        {
            using var file = new FileStream(NetworkNamespace.OpenFile(networkNamespace, SysctlPath(name), FileMode.Open, FileAccess.Write), FileAccess.Write, bufferSize: 0);
            await file.WriteAsync(System.Text.Encoding.ASCII.GetBytes(value + "\n"), ct);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NodeNetworkException($"cannot set sysctl {name}={value}: {e.Message} (the agent needs root or CAP_NET_ADMIN)");
        }
    }

    private static string SysctlPath(string name) => Path.Combine("/proc/sys", name.Replace('.', '/'));

    private static byte HostPrefix(IPAddress vip) => vip.AddressFamily == AddressFamily.InterNetworkV6 ? (byte)128 : (byte)32;

    /// <summary>One short-lived rtnetlink socket (the agent changes a few addresses in its life) and lo's index.</summary>
    private T Route<T>(string what, Func<NetlinkClient, int, T> use)
    {
        try
        {
            using var client = NetlinkClient.Open(Merlin.Linux.Netlink.ProtocolRoute, new NetlinkSocketOptions { NetworkNamespace = networkNamespace });
            var lo = Rtnetlink.Link(client, Loopback) ?? throw new NodeNetworkException($"cannot {what}: this node has no {Loopback} interface");
            return use(client, lo.Index);
        }
        catch (NetlinkException e)
        {
            var why = e.Errno is Errno.EPERM or Errno.EACCES ? " (the agent needs root or CAP_NET_ADMIN)" : "";
            throw new NodeNetworkException($"cannot {what}: {e.Message}{why}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NodeNetworkException($"cannot {what}: {e.Message}");
        }
    }
}
