using Merlin.Testing;
using LabNetwork = Merlin.Lab.Lab;

namespace Merlin.PacketPath.Tests;

/// <summary>
/// The benchmark's harness still runs: a lab with threaded NAPI, Merlin's DSR for one service and a short
/// fixed-rate load. Only that packets went through the LB and were counted is asserted — never a time or a rate.
/// </summary>
public sealed class PacketPathHarnessTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(Merlin.Model.Protocol.Udp)]
    [InlineData(Merlin.Model.Protocol.Tcp)]
    public async Task Merlin_with_one_service_forwards_the_load_and_its_NAPI_thread_time_is_counted(Merlin.Model.Protocol protocol)
    {
        LabNetwork.Require();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("ethtool", "apt-get install ethtool");
        var options = new PacketPathOptions { Rate = 2_000, Duration = TimeSpan.FromSeconds(2), RealServers = 2, Flows = 4, Protocol = protocol };
        await using var harness = await PacketPathHarness.CreateAsync(options, line => TestContext.Current.TestOutputHelper?.WriteLine(line), Ct);
        Assert.Contains("lb1:eth0", harness.Threads.Keys);

        await harness.ProgramMerlinAsync(1, Ct);
        var m = await harness.MeasureAsync(PathConfig.Merlin1, 1, Ct);

        var what = m.ToString();
        Assert.True(m.Sent > 0 && m.Refused == 0, $"the generator sent nothing, or the kernel refused sends: {what}");
        Assert.True(m.LbForwarded > 0, $"the LB forwarded nothing: {what}");
        Assert.True(m.Delivered > 0, $"no real server received anything: {what}");
        Assert.True(m.LbNs > 0, $"the LB's NAPI thread ran for no time: {what}");
        Assert.True(m.PathNs >= m.LbNs, $"the path's threads include the LB's: {what}");
    }

    /// <summary>The --ipvs configurations: Merlin's nftables tables make way for its IPVS dataplane (DR), which forwards the load. Runs in the qemu guest.</summary>
    [Fact]
    [Trait("Kernel", "ipvs")]
    public async Task Merlin_IPVS_with_one_service_forwards_the_load_after_its_nftables_tables_are_gone()
    {
        Requires.Ipvs();
        LabNetwork.Require();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("ethtool", "apt-get install ethtool");
        var options = new PacketPathOptions { Rate = 1_000, Duration = TimeSpan.FromSeconds(1), RealServers = 2, Flows = 4 };
        await using var harness = await PacketPathHarness.CreateAsync(options, line => TestContext.Current.TestOutputHelper?.WriteLine(line), Ct);
        await harness.ProgramMerlinAsync(1, Ct);

        await harness.ProgramIpvsAsync(1, Ct);
        var m = await harness.MeasureAsync(PathConfig.Ipvs1, 1, Ct);

        var what = m.ToString();
        Assert.True(m.Sent > 0 && m.Refused == 0, $"the generator sent nothing, or the kernel refused sends: {what}");
        Assert.True(m.LbForwarded >= m.Sent * 9 / 10, $"IPVS on the LB did not forward the load: {what}");
        Assert.True(m.Delivered >= m.Sent * 9 / 10, $"the real servers did not receive the load: {what}");
        Assert.True(m.LbNs > 0, $"the LB's NAPI thread ran for no time: {what}");
        var tables = (await harness.Lb.ExecAsync("nft", "list", "tables")).StandardOutput;
        Assert.DoesNotContain("netdev merlin", tables);   // the load went through IPVS, not Merlin's netdev rules
    }
}
