using System.Globalization;
using System.Net.NetworkInformation;

namespace Merlin.Dataplane.Nftables;

/// <summary>Settings of the nftables dataplane. Every node of a fleet must use the same <see cref="HashSeed"/>.</summary>
public sealed record NftablesOptions
{
    /// <summary>
    /// The jhash seed of every Maglev lookup. It must be the same on every load-balancer node, or a
    /// flow lands on a different real server after a failover (a random per-rule seed, nft's default,
    /// does exactly that). Parse the <c>--hash-seed</c> flag with <see cref="ParseSeed"/>.
    /// </summary>
    public required uint HashSeed { get; init; }

    /// <summary>
    /// The interface DSR traffic arrives on and leaves by (<c>--interface</c>). Without it, services
    /// whose real servers use the route (DSR) method are reported and not programmed.
    /// </summary>
    public string? Interface { get; init; }

    /// <summary>This node's MAC on <see cref="Interface"/>; null reads it from the interface.</summary>
    public PhysicalAddress? OwnMac { get; init; }

    /// <summary>The netdev table that holds DSR, the state records and the generation marker.</summary>
    public string DsrTable { get; init; } = "merlin";

    /// <summary>The inet table that holds NAT (masq) services.</summary>
    public string NatTable { get; init; } = "merlin_nat";

    /// <summary>The two tables the dataplane owns, as (family, name); it never touches anything else.</summary>
    internal (string Family, string Name)[] OurTables => [("netdev", DsrTable), ("inet", NatTable)];

    /// <summary>How long an idle DSR flow stays pinned to its real server.</summary>
    public TimeSpan FlowTimeout { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>
    /// The most DSR flows pinned at once per address family (the flow maps' declared size). When the
    /// map is full, new flows still follow the Maglev table, just without a pin.
    /// </summary>
    public int MaxPinnedFlows { get; init; } = 262_144;

    /// <summary>How long an apply waits for the MAC of a newly added DSR server before programming without it.</summary>
    public TimeSpan ResolveWait { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Set elements read back per resync to check our maps against what we wrote, in rotation (only
    /// after the kernel's ruleset generation moved, i.e. after someone else's transaction).
    /// </summary>
    public int AuditElementsPerPass { get; init; } = 50_000;

    /// <summary>Run everything inside this named network namespace (<c>ip netns</c>): for tests and the lab.</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>
    /// libnftables, which runs every transaction inside this process (a name dlopen resolves, or a
    /// path). If it cannot be loaded, or this is null, transactions go through <see cref="NftPath"/>.
    /// </summary>
    public string? LibNftables { get; init; } = "libnftables.so.1";

    /// <summary>
    /// Whether DSR Maglev maps new to the kernel are created and filled through our own netlink codec
    /// just before the nft transaction that puts them in use (they are unseen by the packet path
    /// until then), instead of inside nft's script: nft's parser is most of the cost of a million
    /// map elements. False: everything through nft (for comparison).
    /// </summary>
    public bool StageMaps { get; init; } = true;

    /// <summary>The nft executable: the writer when <see cref="LibNftables"/> cannot be loaded.</summary>
    public string NftPath { get; init; } = "nft";

    /// <summary>
    /// The ip (iproute2) executable, used only to run the nft CLI fallback inside <see cref="NetworkNamespace"/>
    /// (<c>ip netns exec</c>); links and neighbours are read and written over rtnetlink.
    /// </summary>
    public string IpPath { get; init; } = "ip";

    /// <summary>Parses a seed written in hex, with or without 0x: "0xdeadbeef", "DEADBEEF".</summary>
    public static uint ParseSeed(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var hex = text.Trim();
        if (hex.StartsWith("0x", StringComparison.OrdinalIgnoreCase)) hex = hex[2..];
        if (hex.Length is 0 or > 8 || !uint.TryParse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var seed))
            throw new FormatException($"hash seed \"{text}\" must be 1 to 8 hex digits, e.g. 0x5eed1234");
        return seed;
    }

    internal void Validate()
    {
        if (Interface is { } name && (name.Length is 0 or > 15 || name.Any(c => c is '"' or '/' or ' ' or '\\' || char.IsControl(c))))
            throw new ArgumentException($"interface name \"{name}\" is not a Linux interface name");
        foreach (var table in new[] { DsrTable, NatTable })
            if (table.Length is 0 or > 64 || !table.All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
                throw new ArgumentException($"table name \"{table}\" must be letters, digits and _");
        if (FlowTimeout < TimeSpan.FromSeconds(1)) throw new ArgumentException("flow timeout must be at least one second");
        if (MaxPinnedFlows < 1) throw new ArgumentException("max pinned flows must be positive");
        if (AuditElementsPerPass < 1) throw new ArgumentException("audit budget must be positive");
    }
}
