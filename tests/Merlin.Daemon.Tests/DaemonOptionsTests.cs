namespace Merlin.Daemon.Tests;

public class DaemonOptionsTests
{
    private static DaemonOptions Parse(params string[] args) =>
        DaemonOptions.From(DaemonOptions.BuildConfiguration(args, new Dictionary<string, string?>()));

    [Fact]
    public void From_OriginalFlagNames_AreUnderstood()
    {
        var o = Parse("--port", "5000", "--health-port", "5001", "--store-backend", "etcd3", "--store-endpoints", "http://a:2379,http://b:2379",
            "--store-prefix", "/lb", "--reconcile-sync-period", "1m");
        Assert.Equal((5000, 5001, "etcd3", "/lb"), (o.Port, o.HealthPort, o.StoreBackend, o.StorePrefix));
        Assert.Equal(["http://a:2379", "http://b:2379"], o.StoreEndpoints);
        Assert.Equal(TimeSpan.FromMinutes(1), o.SyncPeriod);
    }

    [Fact]
    public void From_EnvironmentFillsWhatFlagsLeaveOut_FlagsWin()
    {
        var env = new Dictionary<string, string?> { ["MERLIN_STORE_BACKEND"] = "etcd3", ["MERLIN_PORT"] = "6000" };
        var o = DaemonOptions.From(DaemonOptions.BuildConfiguration(["--port", "7000"], env));
        Assert.Equal(("etcd3", 7000), (o.StoreBackend, o.Port));
    }

    [Fact]
    public void From_Nftables_TakesInterfaceAndSeed()
    {
        var o = Parse("--dataplane", "nftables", "--interface", "eth0", "--hash-seed", "0x5eed1234");
        Assert.Equal(("nftables", "eth0", 0x5eed1234u), (o.Dataplane, o.Interface, o.HashSeed));
    }

    [Theory]
    [InlineData(new[] { "--dataplane", "nftables" }, "--hash-seed: required")]
    [InlineData(new[] { "--dataplane", "nftables", "--hash-seed", "xyz" }, "--hash-seed:")]
    [InlineData(new[] { "--dataplane", "ipvs2" }, "--dataplane: \"ipvs2\" is not one of none, ipvs, nftables, auto")]
    [InlineData(new[] { "--port", "http" }, "--port: \"http\" is not a port")]
    [InlineData(new[] { "--reconcile-sync-period", "10" }, "--reconcile-sync-period:")]
    [InlineData(new[] { "--store-backend", "redis" }, "--store-backend: \"redis\"")]
    [InlineData(new[] { "--bogus", "1" }, "--bogus: unknown flag")]
    public void From_BadValue_NamesTheFlag(string[] args, string expected)
    {
        var e = Assert.Throws<OptionsException>(() => Parse(args));
        Assert.Contains(expected, e.Message);
    }
}
