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
}
