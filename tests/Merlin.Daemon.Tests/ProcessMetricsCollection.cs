namespace Merlin.Daemon.Tests;

/// <summary>
/// Tests that read /metrics run alone: the daemon's families are process-wide (one exporter per process, as
/// prometheus-net's registry is), so another daemon alive in the test process at the same time exports the same series.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessMetricsCollection
{
    public const string Name = "process-wide metrics";
}
