using Merlin.Linux;

namespace Merlin.Ipvs.Tests;

/// <summary>The IPVS client against this machine's real kernel, whatever it has.</summary>
public class IpvsKernelTests
{
    [Fact]
    public void Open_OnAKernelWithoutIpvs_RaisesENOENTFromTheController()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "netlink is Linux only");
        Assert.SkipWhen(File.Exists("/proc/net/ip_vs"), "this kernel has IPVS; IpvsLiveTests cover it");
        // A real socket, a real CTRL_CMD_GETFAMILY and the controller's real refusal, decoded and typed.
        var e = Assert.Throws<NetlinkException>(() => IpvsClient.Open());
        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.Equal("ENOENT", e.ErrorName);
        Assert.Equal("resolve generic-netlink family \"IPVS\"", e.Request);
        Assert.False(IpvsClient.IsAvailable());
    }
}
