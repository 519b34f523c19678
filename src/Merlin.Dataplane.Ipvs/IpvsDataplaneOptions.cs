namespace Merlin.Dataplane.Ipvs;

/// <summary>Settings of the <see cref="IpvsDataplane"/>.</summary>
public sealed record IpvsDataplaneOptions
{
    /// <summary>
    /// Own every virtual service in the kernel, as the Go merlin did: anything not in the store is deleted.
    /// Off by default, so a co-existing kube-proxy or a hand-made service is never removed by surprise.
    /// </summary>
    public bool OwnWholeTable { get; init; }

    /// <summary>
    /// Where the keys of the services this dataplane created are remembered, so a service deleted from
    /// the store while the daemon was down is still known to be ours after a restart. Null keeps them in
    /// memory only.
    /// </summary>
    public string? OwnershipFile { get; init; }

    /// <summary>
    /// How many owned services a resync re-reads from the kernel when the table is larger than this; the
    /// rest come from what was read or written before. Every service is audited within
    /// ⌈services / budget⌉ resyncs, so a change made behind our back is repaired within that many passes;
    /// a table no larger than this is read whole on every pass.
    /// </summary>
    public int AuditServicesPerPass { get; init; } = 256;

    /// <summary>
    /// How long an audit may take per resync, whatever <see cref="AuditServicesPerPass"/> allows: a service
    /// costs two kernel round trips (about 0.1 ms natively, over 1 ms under emulation), and a resync of an
    /// unchanged table should stay well under 100 ms. At least one service is audited per pass.
    /// </summary>
    public TimeSpan AuditTimeBudget { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>A named network namespace to program instead of our own (tests, one daemon per namespace).</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>Sysctls to hold (see <see cref="IpvsSysctls"/>); false only reports drift.</summary>
    public bool ManageSysctls { get; init; }
}
