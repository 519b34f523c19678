using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables;

/// <summary>What the dataplane believes the kernel holds, and what it last saw of the kernel to check that.</summary>
internal sealed class ProgrammedState
{
    public required Dictionary<ServiceKey, ServiceState> Services;
    public required Layout.Layout Layout;

    /// <summary>The ruleset generation after our last write or check; 0 = unknown.</summary>
    public uint Generation;

    /// <summary>Table id → structure signature after our last write or check.</summary>
    public Dictionary<string, string> Signatures = new(StringComparer.Ordinal);

    /// <summary>Our tables as read (or read in part and patched) at <see cref="Generation"/>; null = unknown.</summary>
    public IReadOnlyList<KernelTable>? Tables;

    /// <summary>Set id ("family table set") → the generation at which its elements were last known to be as we wrote them.</summary>
    public Dictionary<string, uint> AuditedAt { get; } = new(StringComparer.Ordinal);

    /// <summary>Our tables as just read, at <paramref name="generation"/>.</summary>
    public void Remember(uint generation, IReadOnlyList<KernelTable> tables)
    {
        Generation = generation;
        Signatures = SignaturesOf(tables);
        Tables = tables;
    }

    /// <summary>Transactions of ours alone moved the generation from <paramref name="before"/> to <paramref name="after"/> without touching what was audited: it still holds.</summary>
    public void Advance(uint before, uint after)
    {
        foreach (var key in AuditedAt.Keys.ToList()) if (AuditedAt[key] == before) AuditedAt[key] = after;
        Generation = after;
    }

    /// <summary>We no longer know what the kernel holds: the next resync reads it whole.</summary>
    public void Unknown()
    {
        Generation = 0;
        Signatures = new(StringComparer.Ordinal);
        Tables = null;
    }

    public static Dictionary<string, string> SignaturesOf(IReadOnlyList<KernelTable> tables) =>
        tables.ToDictionary(t => $"{t.Family} {t.Name}", t => t.Signature(), StringComparer.Ordinal);
}
