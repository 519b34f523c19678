using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Merlin.Agent;

/// <summary>
/// Attaches the node for direct server return and detaches it again, leaving it as it was found.
/// <para>
/// What was there before is written to a state file <em>before</em> anything changes, so an agent
/// killed midway and started again still knows the operator's original sysctls (the live values are
/// then its own) and which loopback VIPs it added (a VIP the operator put there stays when the agent
/// detaches).
/// </para>
/// </summary>
public sealed class NodeAttachment(INodeNetwork network, string stateFile)
{
    /// <summary>Reply to ARP only for addresses on the receiving interface: never for a VIP on lo.</summary>
    public const string ArpIgnore = "net.ipv4.conf.all.arp_ignore";

    /// <summary>Use the outgoing interface's own address as the ARP source, never a VIP on lo.</summary>
    public const string ArpAnnounce = "net.ipv4.conf.all.arp_announce";

    public static readonly IReadOnlyList<(string Name, string Value)> Sysctls = [(ArpIgnore, "1"), (ArpAnnounce, "2")];

    /// <summary>
    /// Sets the ARP sysctls, then adds every VIP to lo. In that order: a VIP on lo before arp_ignore
    /// would be answered for on the LAN, and the router would send the VIP's traffic here instead of
    /// to the load balancer.
    /// </summary>
    public async Task AttachAsync(IReadOnlyCollection<IPAddress> vips, CancellationToken ct)
    {
        var state = Load() ?? new AgentState();
        foreach (var (name, value) in Sysctls)
        {
            var now = await network.ReadSysctlAsync(name, ct);
            if (state.OriginalSysctls.TryAdd(name, now)) Save(state); // first attach: the operator's value
            if (now != value) await network.WriteSysctlAsync(name, value, ct);
        }
        var present = await network.LoopbackAddressesAsync(ct);
        foreach (var vip in vips)
        {
            if (present.Contains(vip)) continue; // the operator's (stays at detach), or ours from an earlier run (recorded)
            if (!state.AddedVips.Contains(vip.ToString()))
            {
                state.AddedVips.Add(vip.ToString());
                Save(state);
            }
            await network.AddLoopbackAsync(vip, ct);
        }
    }

    /// <summary>Removes the VIPs this agent added, then restores the sysctls it changed, then forgets them.</summary>
    public async Task DetachAsync(CancellationToken ct)
    {
        if (Load() is not { } state) return; // never attached, or already detached
        foreach (var text in state.AddedVips.ToList())
        {
            await network.RemoveLoopbackAsync(IPAddress.Parse(text), ct);
            state.AddedVips.Remove(text);
            Save(state);
        }
        foreach (var (name, original) in state.OriginalSysctls)
            if (await network.ReadSysctlAsync(name, ct) != original) await network.WriteSysctlAsync(name, original, ct);
        File.Delete(stateFile);
    }

    /// <summary>What a detach would undo, as recorded; null when nothing is attached.</summary>
    public AgentState? Load()
    {
        if (!File.Exists(stateFile)) return null;
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(stateFile), AgentStateJson.Default.AgentState)
                ?? throw new NodeNetworkException($"{stateFile} is empty");
        }
        catch (JsonException e)
        {
            throw new NodeNetworkException($"{stateFile} is not an agent state file ({e.Message}); restore the node by hand and remove it");
        }
    }

    private void Save(AgentState state)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(stateFile))!;
        Directory.CreateDirectory(dir);
        // Write then rename: a crash leaves the old state or the new one, never half of one.
        var temp = stateFile + ".tmp";
        File.WriteAllText(temp, JsonSerializer.Serialize(state, AgentStateJson.Default.AgentState));
        File.Move(temp, stateFile, overwrite: true);
    }
}

/// <summary>The state file: the node as it was before the agent attached it.</summary>
public sealed class AgentState
{
    /// <summary>Each sysctl the agent sets, with its value before the first attach.</summary>
    public Dictionary<string, string> OriginalSysctls { get; set; } = new(StringComparer.Ordinal);

    /// <summary>VIPs the agent put on lo (and so removes at detach).</summary>
    public List<string> AddedVips { get; set; } = [];
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(AgentState))]
internal sealed partial class AgentStateJson : JsonSerializerContext;
