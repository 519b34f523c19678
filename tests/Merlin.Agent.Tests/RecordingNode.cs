using System.Net;

namespace Merlin.Agent.Tests;

/// <summary>A node whose loopback addresses and sysctls are a dictionary.</summary>
internal sealed class RecordingNode : INodeNetwork
{
    private readonly HashSet<IPAddress> _lo = [];
    private readonly Dictionary<string, string> _sysctls = new() { [NodeAttachment.ArpIgnore] = "0", [NodeAttachment.ArpAnnounce] = "0" };

    public Task<IReadOnlySet<IPAddress>> LoopbackAddressesAsync(CancellationToken ct) => Task.FromResult<IReadOnlySet<IPAddress>>(_lo.ToHashSet());
    public Task AddLoopbackAsync(IPAddress vip, CancellationToken ct) => Task.FromResult(_lo.Add(vip));
    public Task RemoveLoopbackAsync(IPAddress vip, CancellationToken ct) => Task.FromResult(_lo.Remove(vip));
    public Task<string> ReadSysctlAsync(string name, CancellationToken ct) => Task.FromResult(_sysctls[name]);

    public Task WriteSysctlAsync(string name, string value, CancellationToken ct)
    {
        _sysctls[name] = value;
        return Task.CompletedTask;
    }
}
