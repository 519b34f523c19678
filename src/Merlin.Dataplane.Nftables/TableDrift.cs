using Merlin.Dataplane.Nftables.Layout;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// Something in our tables that is not what we wrote, as <see cref="TableAuditor"/> found it.
/// With <see cref="Set"/>, one set's elements differ and only they need writing again; without,
/// the structure (tables, chains, rules, set declarations) changed and the tables are rewritten.
/// </summary>
internal sealed record TableDrift(string Reason)
{
    /// <summary>The set as we wrote it, in its table (the table's other sets and chains left out).</summary>
    public (NftTable Table, NftSet Set)? Set { get; init; }

    /// <summary>The elements the kernel holds in <see cref="Set"/>.</summary>
    public SetContent? Kernel { get; init; }

    /// <summary>Elements of <see cref="Set"/> the kernel holds but we did not write.</summary>
    public int Wrong { get; init; }

    /// <summary>Elements of <see cref="Set"/> we wrote but the kernel does not hold.</summary>
    public int Missing { get; init; }

    public override string ToString() => Reason;
}
