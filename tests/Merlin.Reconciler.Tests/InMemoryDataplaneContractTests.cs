using Merlin.Dataplane.Contract;

namespace Merlin.Reconciler.Tests;

/// <summary><c>--dataplane none</c> keeps the dataplane contract (it is the reconciler's test double, so it must).</summary>
public sealed class InMemoryDataplaneContractTests : DataplaneContractTests
{
    protected override Task<IDataplane> OpenAsync() => Task.FromResult<IDataplane>(new InMemoryDataplane());
}
