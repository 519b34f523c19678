namespace Merlin.Dataplane.Abstractions;

/// <summary>A dataplane that reports conditions an operator should see in <c>meradm status</c> and metrics.</summary>
public interface IDataplaneDiagnostics
{
    /// <summary>Kernel settings the dataplane depends on, as wanted and as found at the last pass (none by default).</summary>
    IReadOnlyList<SysctlStatus> Sysctls => [];

    /// <summary>Things that keep part of the desired state from working, one line each; empty when all is well.</summary>
    IReadOnlyList<string> Warnings { get; }
}

/// <summary>
/// One sysctl: the value wanted, the value found (null if it could not be read), and whether the daemon
/// holds it (<c>--manage-sysctls</c>) or only reports it.
/// </summary>
public sealed record SysctlStatus(string Name, string Want, string? Have, bool Managed, string Why)
{
    public bool Drifted => Have != Want;
}
