using System.Net;
using Merlin.Announcer.Vrrp;

namespace Merlin.Announcer.Tests;

public class KeepalivedConfigTests
{
    internal static VrrpOptions Options(bool preempt = false, TimeSpan? advert = null) => new()
    {
        Interface = "eth0",
        RouterId = 51,
        Priority = 150,
        Peers = [IPAddress.Parse("198.18.0.12")],
        Preempt = preempt,
        ManagementVip = IPAddress.Parse("198.18.0.99"),
        AdvertInterval = advert ?? TimeSpan.FromSeconds(1),
        StateDir = "/var/lib/merlin/keepalived",
    };

    [Fact]
    public void Render_NoPreempt_ManagementVipAdvertisedAndServiceVipsExcluded()
    {
        var text = KeepalivedConfig.Render(Options(), [IPAddress.Parse("2001:db8::100"), IPAddress.Parse("198.18.0.101"), IPAddress.Parse("198.18.0.100"), IPAddress.Parse("198.18.0.100")]);

        Assert.Equal("""
            # Rendered by merlin (--announcer vrrp); rewritten on every change of the service VIPs.
            global_defs {
                notify_fifo /var/lib/merlin/keepalived/notify.fifo
            }

            vrrp_instance merlin_51 {
                state BACKUP
                interface eth0
                virtual_router_id 51
                priority 150
                version 3
                advert_int 1
                nopreempt
                unicast_peer {
                    198.18.0.12
                }
                virtual_ipaddress {
                    198.18.0.99/32 dev eth0
                }
                virtual_ipaddress_excluded {
                    198.18.0.100/32 dev eth0
                    198.18.0.101/32 dev eth0
                    2001:db8::100/128 dev eth0
                }
            }

            """.ReplaceLineEndings("\n"), text);
    }

    [Fact]
    public void Render_PreemptWithoutServiceVips_HasNoNopreemptAndNoExcludedBlock()
    {
        var text = KeepalivedConfig.Render(Options(preempt: true, advert: TimeSpan.FromMilliseconds(250)), []);

        Assert.Equal("""
            # Rendered by merlin (--announcer vrrp); rewritten on every change of the service VIPs.
            global_defs {
                notify_fifo /var/lib/merlin/keepalived/notify.fifo
            }

            vrrp_instance merlin_51 {
                state BACKUP
                interface eth0
                virtual_router_id 51
                priority 150
                version 3
                advert_int 0.25
                unicast_peer {
                    198.18.0.12
                }
                virtual_ipaddress {
                    198.18.0.99/32 dev eth0
                }
            }

            """.ReplaceLineEndings("\n"), text);
    }

    [Fact]
    public void Normalize_DropsTheManagementVipAndDuplicates_AndIgnoresOrder()
    {
        var mgmt = IPAddress.Parse("198.18.0.99");
        var a = KeepalivedConfig.Normalize([IPAddress.Parse("198.18.0.100"), mgmt, IPAddress.Parse("2001:db8::1"), IPAddress.Parse("::ffff:198.18.0.100")], mgmt);
        var b = KeepalivedConfig.Normalize([IPAddress.Parse("2001:db8::1"), IPAddress.Parse("198.18.0.100")], mgmt);

        Assert.Equal(["198.18.0.100", "2001:db8::1"], a.Select(v => v.ToString()));
        Assert.Equal(a, b);
    }

    [Fact]
    public void Render_SameInputs_SameText()
    {
        Assert.Equal(KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.100")]), KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.100")]));
    }
}
