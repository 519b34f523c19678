namespace Merlin.Testing;

/// <summary>
/// Waits for something other threads or processes make true: polled every <c>interval</c>, bounded by
/// <c>limit</c> of real time, and failing with what was awaited (and, if given, a description of what is) so
/// a regression fails instead of hanging. A test on a fake clock polls for the effect of a clock move with
/// it; it never sleeps real time to let a worker "catch up".
/// </summary>
public static class Poll
{
    public static readonly TimeSpan DefaultLimit = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromMilliseconds(10);

    /// <summary>Returns once <paramref name="condition"/> holds; fails the test naming <paramref name="what"/> when <paramref name="limit"/> passes first.</summary>
    public static Task UntilAsync(Func<bool> condition, string what, TimeSpan? limit = null, Func<string>? state = null, TimeSpan? interval = null, CancellationToken ct = default) =>
        UntilAsync(() => Task.FromResult(condition()), what, limit, state, interval, ct);

    /// <summary>As the other overload, with a condition that awaits (asks a server, reads a file).</summary>
    public static async Task UntilAsync(Func<Task<bool>> condition, string what, TimeSpan? limit = null, Func<string>? state = null, TimeSpan? interval = null, CancellationToken ct = default)
    {
        var bound = limit ?? DefaultLimit;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed >= bound)
                Assert.Fail($"{what}: not within {bound.TotalSeconds:0.###} s{(state is null ? "" : "\n" + state())}");
            await Task.Delay(interval ?? DefaultInterval, ct);
        }
    }
}
