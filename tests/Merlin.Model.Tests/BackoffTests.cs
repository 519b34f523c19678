using CsCheck;

namespace Merlin.Model.Tests;

public sealed class BackoffTests
{
    private static readonly Gen<(long Initial, long Max, double Jitter, int Seed, int Steps)> Cases =
        from initial in Gen.Long[1, TimeSpan.FromSeconds(10).Ticks]
        from factor in Gen.Long[1, 1 << 12]
        from jitter in Gen.Double[0, 0.99]
        from seed in Gen.Int
        from steps in Gen.Int[1, 40]
        select (initial, initial * factor, jitter, seed, steps);

    [Fact]
    public void EveryDelay_IsTheNominalOneShortenedByAtMostTheJitter_AndTheNominalOneDoublesUpToTheMax()
    {
        Cases.Sample(c =>
        {
            var backoff = new Backoff(TimeSpan.FromTicks(c.Initial), TimeSpan.FromTicks(c.Max), c.Jitter, new Random(c.Seed));
            var expected = c.Initial;
            for (var i = 0; i < c.Steps; i++)
            {
                Assert.Equal(expected, backoff.Nominal.Ticks);
                var delay = backoff.Next().Ticks;
                Assert.InRange(delay, (long)Math.Floor(expected * (1 - c.Jitter)), expected);
                Assert.True(delay > 0);
                expected = Math.Min(expected * 2, c.Max);
                Assert.Equal(i + 1, backoff.Failures);
            }
            Assert.InRange(backoff.Nominal.Ticks, c.Initial, c.Max);
        });
    }

    [Fact]
    public void Reset_StartsOverAtTheInitialDelay()
    {
        Cases.Sample(c =>
        {
            var backoff = new Backoff(TimeSpan.FromTicks(c.Initial), TimeSpan.FromTicks(c.Max), c.Jitter, new Random(c.Seed));
            for (var i = 0; i < c.Steps; i++) backoff.Next();
            backoff.Reset();
            Assert.Equal(0, backoff.Failures);
            Assert.Equal(c.Initial, backoff.Nominal.Ticks);
            Assert.InRange(backoff.Next().Ticks, (long)Math.Floor(c.Initial * (1 - c.Jitter)), c.Initial);
        });
    }

    [Fact]
    public void TheJitter_SpreadsTheDelays_OverItsWholeRange()
    {
        // Nodes that failed together must not retry together: 1,000 first delays of 1 s with 20% jitter cover
        // most of [0.8 s, 1 s], not one value.
        var random = new Random(7);
        var delays = Enumerable.Range(0, 1000).Select(_ => new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30), 0.2, random).Next()).ToList();
        Assert.All(delays, d => Assert.InRange(d, TimeSpan.FromMilliseconds(800), TimeSpan.FromSeconds(1)));
        Assert.True(delays.Min() < TimeSpan.FromMilliseconds(810), $"shortest {delays.Min()}");
        Assert.True(delays.Max() > TimeSpan.FromMilliseconds(990), $"longest {delays.Max()}");
        Assert.True(delays.Distinct().Count() > 900);
    }

    [Fact]
    public void WithoutJitter_TheDelaysAreExactlyTheDoublingSeries()
    {
        var backoff = new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30), jitter: 0);
        Assert.Equal([1, 2, 4, 8, 16, 30, 30], Enumerable.Range(0, 7).Select(_ => backoff.Next().TotalSeconds));
    }

    [Theory]
    [InlineData(0, 30, 0.2, "initial")]
    [InlineData(2, 1, 0.2, "max")]
    [InlineData(1, 30, 1.0, "jitter")]
    [InlineData(1, 30, -0.1, "jitter")]
    public void BadSettings_AreRefusedNamingTheParameter(int initial, int max, double jitter, string parameter)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new Backoff(TimeSpan.FromSeconds(initial), TimeSpan.FromSeconds(max), jitter));
        Assert.Equal(parameter, e.ParamName);
    }
}
