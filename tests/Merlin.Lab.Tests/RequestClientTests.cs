using Merlin.Lab.Server;

namespace Merlin.Lab.Tests;

/// <summary>The request loop's latency percentiles: nearest rank, so every reported value is one a request took.</summary>
public sealed class RequestClientTests
{
    [Fact]
    public void Percentiles_are_the_nearest_rank()
    {
        var hundred = Enumerable.Range(1, 100).Select(i => (double)i).ToList();
        Assert.Equal(50, RequestClient.Percentile(hundred, 50));
        Assert.Equal(99, RequestClient.Percentile(hundred, 99));
        Assert.Equal(100, RequestClient.Percentile(hundred, 100));
        Assert.Equal(1, RequestClient.Percentile(hundred, 0));
        double[] three = [1.5, 2.25, 9];
        Assert.Equal(2.25, RequestClient.Percentile(three, 50));
        Assert.Equal(9, RequestClient.Percentile(three, 99));
        Assert.Equal(0, RequestClient.Percentile([], 50));
    }
}
