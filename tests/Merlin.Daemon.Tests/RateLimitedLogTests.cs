using Merlin.Api;
using Microsoft.Extensions.Time.Testing;

namespace Merlin.Daemon.Tests;

public class RateLimitedLogTests
{
    [Fact]
    public void TryEnter_OneLinePerInterval_TheNextCountsTheLinesLeftOut()
    {
        var time = new FakeTimeProvider();
        var log = new RateLimitedLog(time, TimeSpan.FromSeconds(10));

        Assert.True(log.TryEnter(out var first));
        Assert.Equal(0, first);
        for (var i = 0; i < 1000; i++) Assert.False(log.TryEnter(out _));
        time.Advance(TimeSpan.FromSeconds(9.9));
        Assert.False(log.TryEnter(out _));
        time.Advance(TimeSpan.FromSeconds(0.1));

        Assert.True(log.TryEnter(out var left));
        Assert.Equal(1001, left);
        Assert.False(log.TryEnter(out _));
    }
}
