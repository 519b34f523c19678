using System.Net;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>Attach and detach against a recorded node: order, what is remembered, and restarts midway.</summary>
public sealed class NodeAttachmentTests : IDisposable
{
    private static readonly IPAddress Vip = IPAddress.Parse("198.18.0.100");
    private static readonly IPAddress Vip6 = IPAddress.Parse("2001:db8::100");
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private readonly TempDir _dir = new("agent");
    private readonly FakeNode _node = new();

    private NodeAttachment Attachment() => new(_node, _dir.File("node.json"));

    [Fact]
    public async Task Attach_SetsTheArpSysctlsBeforeAnyVipIsOnLo()
    {
        await Attachment().AttachAsync([Vip, Vip6], Ct);
        Assert.Equal(["sysctl net.ipv4.conf.all.arp_ignore=1", "sysctl net.ipv4.conf.all.arp_announce=2", $"add {Vip}", $"add {Vip6}"], _node.Changes);
    }

    [Fact]
    public async Task Detach_RemovesTheVipsItAdded_RestoresTheSysctls_AndForgetsThem()
    {
        _node.Sysctls[NodeAttachment.ArpAnnounce] = "1";
        await Attachment().AttachAsync([Vip], Ct);
        await Attachment().DetachAsync(Ct);
        Assert.Empty(_node.Loopback);
        Assert.Equal("0", _node.Sysctls[NodeAttachment.ArpIgnore]);
        Assert.Equal("1", _node.Sysctls[NodeAttachment.ArpAnnounce]);
        Assert.Null(Attachment().Load());
    }

    [Fact]
    public async Task AVipTheOperatorPutOnLo_StaysThereAfterDetach()
    {
        _node.Loopback.Add(Vip);
        await Attachment().AttachAsync([Vip, Vip6], Ct);
        await Attachment().DetachAsync(Ct);
        Assert.Equal([Vip], _node.Loopback);
    }

    [Fact]
    public async Task AnAgentRestartedAfterAttaching_StillRestoresTheValuesFromBeforeTheFirstAttach()
    {
        _node.Sysctls[NodeAttachment.ArpIgnore] = "0";
        await Attachment().AttachAsync([Vip], Ct);
        // Killed here; the node now has the agent's values. A new agent attaches again, then detaches.
        _node.Changes.Clear();
        await Attachment().AttachAsync([Vip], Ct);
        Assert.Empty(_node.Changes); // nothing to do: already attached
        await Attachment().DetachAsync(Ct);
        Assert.Equal("0", _node.Sysctls[NodeAttachment.ArpIgnore]);
        Assert.Empty(_node.Loopback); // its own VIP from the first run, recorded before it was added
    }

    [Fact]
    public async Task AFailedVipAdd_IsStillRemovedByTheNextDetach()
    {
        _node.FailAdd = true;
        await Assert.ThrowsAsync<NodeNetworkException>(() => Attachment().AttachAsync([Vip], Ct));
        _node.FailAdd = false;
        _node.Loopback.Add(Vip); // the add happened after all (the process died before it answered)
        await Attachment().DetachAsync(Ct);
        Assert.Empty(_node.Loopback);
        Assert.Equal("0", _node.Sysctls[NodeAttachment.ArpIgnore]);
    }

    [Fact]
    public async Task DetachWithoutAttach_ChangesNothing()
    {
        await Attachment().DetachAsync(Ct);
        Assert.Empty(_node.Changes);
    }

    [Fact]
    public async Task ACorruptStateFile_IsAnErrorThatNamesIt()
    {
        File.WriteAllText(_dir.File("node.json"), "{not json");
        var e = await Assert.ThrowsAsync<NodeNetworkException>(() => Attachment().DetachAsync(Ct));
        Assert.Contains("node.json", e.Message);
    }

    public void Dispose() => _dir.Dispose();

    private sealed class FakeNode : INodeNetwork
    {
        public Dictionary<string, string> Sysctls { get; } = new() { [NodeAttachment.ArpIgnore] = "0", [NodeAttachment.ArpAnnounce] = "0" };
        public HashSet<IPAddress> Loopback { get; } = [];
        public List<string> Changes { get; } = [];
        public bool FailAdd { get; set; }

        public Task<IReadOnlySet<IPAddress>> LoopbackAddressesAsync(CancellationToken ct) => Task.FromResult<IReadOnlySet<IPAddress>>(Loopback.ToHashSet());

        public Task AddLoopbackAsync(IPAddress vip, CancellationToken ct)
        {
            if (FailAdd) throw new NodeNetworkException("ip addr add failed");
            if (Loopback.Add(vip)) Changes.Add($"add {vip}");
            return Task.CompletedTask;
        }

        public Task RemoveLoopbackAsync(IPAddress vip, CancellationToken ct)
        {
            if (Loopback.Remove(vip)) Changes.Add($"del {vip}");
            return Task.CompletedTask;
        }

        public Task<string> ReadSysctlAsync(string name, CancellationToken ct) => Task.FromResult(Sysctls[name]);

        public Task WriteSysctlAsync(string name, string value, CancellationToken ct)
        {
            Sysctls[name] = value;
            Changes.Add($"sysctl {name}={value}");
            return Task.CompletedTask;
        }
    }
}
