using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

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
/// The node's own network namespace: /proc/sys for sysctls, iproute2's <c>ip</c> for the loopback
/// addresses (present on every Linux node; the agent changes two addresses per VIP in its life, so a
/// process per change costs nothing worth a netlink codec of its own).
/// </summary>
public sealed class LinuxNodeNetwork(string ipCommand = "ip") : INodeNetwork
{
    public async Task<IReadOnlySet<IPAddress>> LoopbackAddressesAsync(CancellationToken ct)
    {
        var output = await IpAsync(["-o", "addr", "show", "dev", "lo"], ct);
        var found = new HashSet<IPAddress>();
        // "1: lo    inet 198.18.0.100/32 scope global lo\       valid_lft forever preferred_lft forever"
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            for (var i = 0; i + 1 < fields.Length; i++)
                if (fields[i] is "inet" or "inet6" && IPAddress.TryParse(fields[i + 1].Split('/')[0], out var address))
                    found.Add(address);
        }
        return found;
    }

    public async Task AddLoopbackAsync(IPAddress vip, CancellationToken ct)
    {
        if ((await LoopbackAddressesAsync(ct)).Contains(vip)) return;
        // nodad: the address must answer at once; duplicate detection on lo only delays it.
        string[] argv = vip.AddressFamily == AddressFamily.InterNetworkV6
            ? ["addr", "add", $"{vip}/128", "dev", "lo", "nodad"]
            : ["addr", "add", $"{vip}/32", "dev", "lo"];
        await IpAsync(argv, ct);
    }

    public async Task RemoveLoopbackAsync(IPAddress vip, CancellationToken ct)
    {
        if (!(await LoopbackAddressesAsync(ct)).Contains(vip)) return;
        await IpAsync(["addr", "del", $"{vip}/{(vip.AddressFamily == AddressFamily.InterNetworkV6 ? 128 : 32)}", "dev", "lo"], ct);
    }

    public async Task<string> ReadSysctlAsync(string name, CancellationToken ct)
    {
        try
        {
            return (await File.ReadAllTextAsync(SysctlPath(name), ct)).Trim();
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
            await File.WriteAllTextAsync(SysctlPath(name), value + "\n", ct);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NodeNetworkException($"cannot set sysctl {name}={value}: {e.Message} (the agent needs root or CAP_NET_ADMIN)");
        }
    }

    private static string SysctlPath(string name) => Path.Combine("/proc/sys", name.Replace('.', '/'));

    private async Task<string> IpAsync(IReadOnlyList<string> args, CancellationToken ct)
    {
        var start = new ProcessStartInfo(ipCommand) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) start.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new NodeNetworkException($"{ipCommand} did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new NodeNetworkException($"cannot run {ipCommand} ({e.Message}): install iproute2");
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync(ct);
            var stderr = process.StandardError.ReadToEndAsync(ct);
            await process.WaitForExitAsync(ct);
            if (process.ExitCode != 0)
                throw new NodeNetworkException($"ip {string.Join(' ', args)} failed: {(await stderr).Trim()}");
            return await stdout;
        }
    }
}
