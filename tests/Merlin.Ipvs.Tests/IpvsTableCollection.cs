namespace Merlin.Ipvs.Tests;

/// <summary>
/// Test classes that flush and fill the IPVS table of the test process's own network namespace share it, so
/// they run one after another (classes that make their own namespaces, like
/// <see cref="DirectRoutingTrafficTests"/>, still run beside them).
/// </summary>
[CollectionDefinition(Name)]
public sealed class IpvsTableCollection
{
    public const string Name = "IPVS table of the test process's namespace";
}
