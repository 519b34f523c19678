using Merlin.Kubernetes.Mapping;

namespace Merlin.Kubernetes.Controller;

/// <summary>What the controller does, as its flags set it.</summary>
public sealed record ControllerOptions
{
    /// <summary>Also serve LoadBalancer Services that name no class (<c>--default-class</c>).</summary>
    public bool DefaultClass { get; init; }
    /// <summary>How long a node that leaves a Service keeps its open connections (<c>--drain-period</c>).</summary>
    public TimeSpan DrainPeriod { get; init; } = TimeSpan.FromSeconds(30);
    public HealthOptions Health { get; init; } = HealthOptions.Default;
    public int Workers { get; init; } = 4;
    /// <summary>Every Service is reconciled again and Merlin re-read this often, repairing what changed behind our back.</summary>
    public TimeSpan Resync { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>A Service whose pool is exhausted is tried again after this long (pool changes retry it at once).</summary>
    public TimeSpan RetryAllocation { get; init; } = TimeSpan.FromSeconds(30);
    public string Component { get; init; } = "merlin-k8s";
    public string Identity { get; init; } = Environment.MachineName;
}
