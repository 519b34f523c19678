using Merlin.Model;

namespace Merlin.Model.Tests;

public class SchedulersTests
{
    [Fact]
    public void ParseScheduler_Unknown_NamesFieldAndListsChoices()
    {
        var error = Schedulers.ParseScheduler("foo", "config.scheduler", out _);
        Assert.NotNull(error);
        Assert.Equal("config.scheduler: \"foo\" is not an IPVS scheduler (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh)", error.ToString());
    }

    [Fact]
    public void ParseScheduler_Empty_IsRequired() =>
        Assert.Contains("required", Schedulers.ParseScheduler("", "config.scheduler", out _)!.Reason);

    [Theory]
    [InlineData("sh", new[] { "sh-port", "sh-fallback" }, SchedulerFlags.Flag1 | SchedulerFlags.Flag2)]
    [InlineData("mh", new[] { "mh-port" }, SchedulerFlags.Flag2)]
    [InlineData("sh", new[] { "flag-1", "flag-2" }, SchedulerFlags.Flag1 | SchedulerFlags.Flag2)]
    [InlineData("mh", new[] { "flag-1" }, SchedulerFlags.Flag1)]
    [InlineData("rr", new string[0], SchedulerFlags.None)]
    public void ParseFlags_FlagsOfTheScheduler_AreAccepted(string scheduler, string[] flags, SchedulerFlags expected)
    {
        Assert.Null(Schedulers.ParseFlags(scheduler, flags, "config.flags", out var parsed));
        Assert.Equal(expected, parsed);
    }

    [Theory]
    [InlineData("rr", "sh-port", "takes no flags")]
    [InlineData("sh", "mh-port", "takes sh-fallback, sh-port")]
    [InlineData("wrr", "flag-1", "takes no flags")]
    [InlineData("sh", "flag-3", "takes sh-fallback, sh-port")]
    public void ParseFlags_FlagOfAnotherScheduler_IsRejected(string scheduler, string flag, string reason)
    {
        var error = Schedulers.ParseFlags(scheduler, [flag], "config.flags", out _);
        Assert.NotNull(error);
        Assert.Equal("config.flags", error.Field);
        Assert.Contains(reason, error.Reason);
    }

    [Fact]
    public void FlagNames_RoundTripsNamedFlags()
    {
        Assert.Null(Schedulers.ParseFlags("mh", ["mh-port", "mh-fallback"], "f", out var parsed));
        Assert.Equal(["mh-fallback", "mh-port"], Schedulers.FlagNames("mh", parsed));
    }

    [Fact]
    public void MdTable_IsMhsThirdFlag_AndSelectsTheStoredTable()
    {
        Assert.Null(Schedulers.ParseFlags("mh", ["mh-port", "md-table"], "f", out var parsed));
        Assert.Equal(SchedulerFlags.Flag2 | SchedulerFlags.Flag3, parsed);
        Assert.Equal(["mh-port", "md-table"], Schedulers.FlagNames("mh", parsed));
        Assert.Equal(["flag-2", "flag-3"], Schedulers.AliasNames(parsed));   // stored as the Go merlin spells it
        Assert.True(Schedulers.UsesStoredTable(new ServiceConfig { Scheduler = "mh", Flags = parsed }));
        Assert.False(Schedulers.UsesStoredTable(new ServiceConfig { Scheduler = "mh", Flags = SchedulerFlags.Flag2 }));
        Assert.NotNull(Schedulers.ParseFlags("sh", ["md-table"], "f", out _));
    }
}
