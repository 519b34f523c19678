using System.Net;
using Merlin.Announcer.Vrrp;

namespace Merlin.Announcer.Tests;

public class VrrpOptionsTests
{
    private static readonly VrrpOptions Good = KeepalivedConfigTests.Options();

    [Fact]
    public void Validate_Good_IsNull() => Assert.Null(Good.Validate());

    [Fact]
    public void DownInterval_IsThreeAdvertsPlusTheSkewOfThePriority()
    {
        // 500 ms: 1.5 s + (256 - 150)/256 × 0.5 s = 1.707 s at 150; 1.805 s at 100.
        Assert.Equal(1707, (int)(Good with { AdvertInterval = TimeSpan.FromMilliseconds(500) }).DownInterval.TotalMilliseconds);
        Assert.Equal(1804, (int)(Good with { AdvertInterval = TimeSpan.FromMilliseconds(500), Priority = 100 }).DownInterval.TotalMilliseconds);
    }

    public static TheoryData<string, string> Broken() => new()
    {
        { "interface", "--vrrp-interface" },
        { "interface-long", "--vrrp-interface" },
        { "router-id-0", "--vrrp-router-id" },
        { "router-id-256", "--vrrp-router-id" },
        { "priority-0", "--vrrp-priority" },
        { "priority-255", "--vrrp-priority" },
        { "no-peer", "--vrrp-peer" },
        { "peer-family", "--vrrp-peer" },
        { "peer-is-vip", "--vrrp-peer" },
        { "peer-twice", "--vrrp-peer" },
        { "peer-loopback", "--vrrp-peer" },
        { "mgmt-any", "--management-vip" },
        { "mgmt-multicast", "--management-vip" },
        { "advert-5ms", "--vrrp-advert-interval" },
        { "advert-15ms", "--vrrp-advert-interval" },
        { "advert-41s", "--vrrp-advert-interval" },
        { "window-2h", "--vrrp-start-window" },
    };

    [Theory]
    [MemberData(nameof(Broken))]
    public void Validate_Broken_NamesTheFlag(string what, string flag)
    {
        var o = what switch
        {
            "interface" => Good with { Interface = "" },
            "window-2h" => Good with { StartWindow = TimeSpan.FromHours(2) },
            "interface-long" => Good with { Interface = "a-very-long-interface-name" },
            "router-id-0" => Good with { RouterId = 0 },
            "router-id-256" => Good with { RouterId = 256 },
            "priority-0" => Good with { Priority = 0 },
            "priority-255" => Good with { Priority = 255 },
            "no-peer" => Good with { Peers = [] },
            "peer-family" => Good with { Peers = [IPAddress.Parse("2001:db8::12")] },
            "peer-is-vip" => Good with { Peers = [Good.ManagementVip] },
            "peer-twice" => Good with { Peers = [IPAddress.Parse("198.18.0.12"), IPAddress.Parse("198.18.0.12")] },
            "peer-loopback" => Good with { Peers = [IPAddress.Loopback] },
            "mgmt-any" => Good with { ManagementVip = IPAddress.Any },
            "mgmt-multicast" => Good with { ManagementVip = IPAddress.Parse("224.0.0.18") },
            "advert-5ms" => Good with { AdvertInterval = TimeSpan.FromMilliseconds(5) },
            "advert-15ms" => Good with { AdvertInterval = TimeSpan.FromMilliseconds(15) },
            "advert-41s" => Good with { AdvertInterval = TimeSpan.FromSeconds(41) },
            _ => throw new ArgumentOutOfRangeException(nameof(what)),
        };

        var error = o.Validate();

        Assert.NotNull(error);
        Assert.Equal(flag, error.Value.Flag);
        Assert.False(string.IsNullOrWhiteSpace(error.Value.Reason));
    }

    [Fact]
    public void Paths_AreAllInTheStateDir()
    {
        Assert.All(new[] { Good.ConfigPath, Good.PidPath, Good.VrrpPidPath, Good.FifoPath }, p => Assert.Equal(Good.StateDir, Path.GetDirectoryName(p)));
        Assert.Equal("merlin_51", Good.InstanceName);
    }
}
