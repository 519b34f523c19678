using Merlin.Model;

namespace Merlin.Cli.Tests;

// The duration syntax meradm accepts for --timeout and --health-*, from the shared Merlin.Model parser.
public class DurationsTests
{
    [Theory]
    [InlineData("500ms", 500)]
    [InlineData("10s", 10_000)]
    [InlineData("1m", 60_000)]
    [InlineData("1h30m", 5_400_000)]
    [InlineData("1.5s", 1_500)]
    [InlineData(" 2m5s ", 125_000)]
    public void TryParse_NumberAndUnit_GivesTheSpan(string text, int milliseconds)
    {
        Assert.True(Durations.TryParse(text, out var value, out var error), error);
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), value);
    }

    [Theory]
    [InlineData("10", "needs a unit")]
    [InlineData("", "empty")]
    [InlineData("s", "is not a duration")]
    [InlineData("10x", "\"x\" in \"10x\" is not a unit")]
    [InlineData("-5s", "is not a duration")]
    public void TryParse_Malformed_SaysWhy(string text, string reason)
    {
        Assert.False(Durations.TryParse(text, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData(10_000, "10s")]
    [InlineData(500, "500ms")]
    [InlineData(1_500, "1.5s")]
    [InlineData(90_000, "1m30s")]
    [InlineData(3_600_000, "1h")]
    [InlineData(0, "0s")]
    public void Format_RoundTrips(int milliseconds, string text)
    {
        Assert.Equal(text, Durations.Format(TimeSpan.FromMilliseconds(milliseconds)));
        Assert.True(Durations.TryParse(text, out var back, out _));
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), back);
    }
}
