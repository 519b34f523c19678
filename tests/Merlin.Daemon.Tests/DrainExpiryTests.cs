using Google.Protobuf.WellKnownTypes;
using Merlin.Api;
using Merlin.Store;
using Merlin.Store.Sqlite;
using Merlin.Store.Tests;
using Merlin.Testing;
using Merlin.Contracts;
using Microsoft.Extensions.Logging.Abstractions;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>The drain-expiry worker alone, on a real store and a fake clock: it wakes at each deadline and no earlier.</summary>
public sealed class DrainExpiryTests : IAsyncLifetime
{
    private readonly TempDir _dir = new("drain-expiry");
    private readonly FakeClock _time = new(new DateTimeOffset(2026, 1, 1, 12, 0, 0, TimeSpan.Zero));
    private SqliteStore _store = null!;
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _store = new SqliteStore(_dir.File("merlin.db"));
        // A firewall-mark service, which takes servers of both families: an IPv6 server beside the IPv4 ones.
        await _store.CreateServiceAsync(new Wire.VirtualService
        {
            Id = "web", Key = new() { Fwmark = 7, Family = Wire.AddressFamily.Inet }, Config = new() { Scheduler = "mh" },
        }, Ct);
        foreach (var ip in new[] { "198.18.1.1", "198.18.1.2", "2001:db8::3" })
            await _store.CreateServerAsync(new Wire.RealServer { ServiceID = "web", Key = new() { Ip = ip, Port = 80 }, Config = new() { Weight = 5, Forward = ForwardMethod.Route } }, Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _dir.Dispose();
    }

    private async Task DrainAsync(string ip, TimeSpan? period)
    {
        var current = (await _store.GetServerAsync("web", ip, 80, Ct))!;
        var next = current.Value.Clone();
        next.DrainDeadline = period is { } p ? Timestamp.FromDateTimeOffset(_time.GetUtcNow() + p) : null;
        await _store.UpdateServerAsync(next, current.Version, Ct);
    }

    private async Task<bool> ExistsAsync(string ip) => await _store.GetServerAsync("web", ip, 80, Ct) is not null;

    private static Task EventuallyAsync(Func<Task<bool>> condition) =>
        Poll.UntilAsync(condition, "the expiry's store change", TimeSpan.FromSeconds(30), interval: TimeSpan.FromMilliseconds(20), ct: Ct); // a loaded CI machine

    /// <summary>Waits until the worker sleeps on the fake clock with only <paramref name="left"/> to go: it has
    /// handled what it learnt and what the last clock move woke, so the store stays as it is until the clock moves.</summary>
    private Task WaitingAsync(TimeSpan left) =>
        _time.UntilPendingAsync(p => p.Count == 1 && p[0] == left, $"the worker waiting {left.TotalSeconds} s for the next deadline", Ct);

    [Fact]
    public async Task Expiry_RemovesEachServerAtItsDeadline_NotBefore_AndLeavesAnUndrainedOne()
    {
        await DrainAsync("198.18.1.1", TimeSpan.FromSeconds(60));
        var expiry = new DrainExpiry(_store, _time, NullLogger<DrainExpiry>.Instance);
        await expiry.StartAsync(Ct);
        try
        {
            await expiry.Started.WaitAsync(TimeSpan.FromSeconds(10), Ct);
            await DrainAsync("2001:db8::3", TimeSpan.FromSeconds(120)); // learnt from the watch
            await DrainAsync("198.18.1.2", TimeSpan.FromSeconds(90));
            await EventuallyAsync(() => Task.FromResult(expiry.Draining == 3));

            _time.Advance(TimeSpan.FromSeconds(59));
            await WaitingAsync(TimeSpan.FromSeconds(1));
            Assert.True(await ExistsAsync("198.18.1.1"));

            _time.Advance(TimeSpan.FromSeconds(1));
            await EventuallyAsync(async () => !await ExistsAsync("198.18.1.1"));
            Assert.True(await ExistsAsync("198.18.1.2"));

            await DrainAsync("198.18.1.2", period: null); // undrained before its deadline
            await EventuallyAsync(() => Task.FromResult(expiry.Draining == 1));
            await WaitingAsync(TimeSpan.FromSeconds(60)); // [2001:db8::3]'s; 1.2's is forgotten
            _time.Advance(TimeSpan.FromSeconds(30)); // past 1.2's old deadline; before [2001:db8::3]'s
            await WaitingAsync(TimeSpan.FromSeconds(30));
            Assert.True(await ExistsAsync("198.18.1.2"));
            Assert.True(await ExistsAsync("2001:db8::3"));

            _time.Advance(TimeSpan.FromSeconds(30));
            await EventuallyAsync(async () => !await ExistsAsync("2001:db8::3"));
            // The worker counts a removal once its delete returns, which may be after a reader already sees it gone.
            await EventuallyAsync(() => Task.FromResult(expiry.Removed == 2));
            var left = Assert.Single((await _store.ListAsync(Ct)).Items).Servers;
            Assert.Equal("198.18.1.2", Assert.Single(left).Key.Ip);
            Assert.Equal(5u, left[0].Config.Weight);
        }
        finally
        {
            await expiry.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Expiry_OnStart_RemovesServersWhoseDeadlinePassedWhileNoDaemonRan()
    {
        await DrainAsync("198.18.1.1", TimeSpan.FromSeconds(10));
        await DrainAsync("198.18.1.2", TimeSpan.FromSeconds(100));
        _time.Advance(TimeSpan.FromSeconds(30));
        var expiry = new DrainExpiry(_store, _time, NullLogger<DrainExpiry>.Instance);

        await expiry.StartAsync(Ct);
        try
        {
            await expiry.Started.WaitAsync(TimeSpan.FromSeconds(10), Ct);

            Assert.False(await ExistsAsync("198.18.1.1"));
            Assert.True(await ExistsAsync("198.18.1.2"));
            Assert.Equal(1, expiry.Removed);
        }
        finally
        {
            await expiry.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Expiry_ADrainMovedLaterJustBeforeTheDeadline_KeepsTheServerUntilTheNewOne()
    {
        var expiry = new DrainExpiry(_store, _time, NullLogger<DrainExpiry>.Instance);
        await DrainAsync("198.18.1.1", TimeSpan.FromSeconds(10));
        await expiry.StartAsync(Ct);
        try
        {
            await expiry.Started.WaitAsync(TimeSpan.FromSeconds(10), Ct);
            _time.Advance(TimeSpan.FromSeconds(9));
            await DrainAsync("198.18.1.1", TimeSpan.FromSeconds(60));
            await WaitingAsync(TimeSpan.FromSeconds(60)); // the new deadline, learnt from the watch

            _time.Advance(TimeSpan.FromSeconds(5));
            await WaitingAsync(TimeSpan.FromSeconds(55));
            Assert.True(await ExistsAsync("198.18.1.1"));

            _time.Advance(TimeSpan.FromSeconds(60));
            await EventuallyAsync(async () => !await ExistsAsync("198.18.1.1"));
        }
        finally
        {
            await expiry.StopAsync(CancellationToken.None);
        }
    }
}
