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
    public void Render_ManagementVipAdvertised_ServiceVipsExcluded_PriorityTrackedFromAFile_NoNopreempt()
    {
        var text = KeepalivedConfig.Render(Options(), [IPAddress.Parse("2001:db8::100"), IPAddress.Parse("198.18.0.101"), IPAddress.Parse("198.18.0.100"), IPAddress.Parse("198.18.0.100")]);

        Assert.Equal("""
            # Rendered by merlin (--announcer vrrp); the service VIPs are updated while this node is MASTER.
            global_defs {
                notify_fifo /var/lib/merlin/keepalived/notify.fifo
            }

            track_file merlin_51_priority {
                file "/var/lib/merlin/keepalived/priority"
                weight 1
            }

            vrrp_instance merlin_51 {
                state BACKUP
                interface eth0
                virtual_router_id 51
                priority 150
                version 3
                advert_int 1
                notify_priority_changes true
                track_file {
                    merlin_51_priority
                }
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
    public void Render_WithoutServiceVips_HasNoExcludedBlock()
    {
        var text = KeepalivedConfig.Render(Options(preempt: true, advert: TimeSpan.FromMilliseconds(250)), []);

        Assert.Equal("""
            # Rendered by merlin (--announcer vrrp); the service VIPs are updated while this node is MASTER.
            global_defs {
                notify_fifo /var/lib/merlin/keepalived/notify.fifo
            }

            track_file merlin_51_priority {
                file "/var/lib/merlin/keepalived/priority"
                weight 1
            }

            vrrp_instance merlin_51 {
                state BACKUP
                interface eth0
                virtual_router_id 51
                priority 150
                version 3
                advert_int 0.25
                notify_priority_changes true
                track_file {
                    merlin_51_priority
                }
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
    public void Settings_IgnoreTheServiceVips_ButNotTheInstance()
    {
        var one = KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.100")]);
        var other = KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.101"), IPAddress.Parse("2001:db8::1")]);

        Assert.Equal(KeepalivedConfig.Settings(KeepalivedConfig.Render(Options(), [])), KeepalivedConfig.Settings(one));
        Assert.Equal(KeepalivedConfig.Settings(one), KeepalivedConfig.Settings(other));
        Assert.NotEqual(KeepalivedConfig.Settings(one), KeepalivedConfig.Settings(KeepalivedConfig.Render(Options() with { Priority = 100 }, [IPAddress.Parse("198.18.0.100")])));
        Assert.Equal(["198.18.0.101", "2001:db8::1"], KeepalivedConfig.ServiceVips(other).Select(v => v.ToString()));
        Assert.Empty(KeepalivedConfig.ServiceVips(KeepalivedConfig.Render(Options(), [])));
    }

    [Theory]
    // drained, master, within a first election's window → the number in the file, and the effective priority
    [InlineData(false, false, false, 0, 150)]    // BACKUP: its configured priority, preempting any lower MASTER
    [InlineData(false, true, true, 0, 150)]      // a first election's MASTER: a higher priority may still take over
    [InlineData(false, true, false, 104, 254)]   // a MASTER that keeps the VIPs: nobody preempts 254
    [InlineData(true, true, false, -254, 0)]     // drained: FAULT
    public void PriorityHold_Values(bool drained, bool master, bool window, int value, int effective)
    {
        Assert.Equal(value, PriorityHold.Value(Options(), drained, master, window));
        Assert.Equal(effective, PriorityHold.Effective(150, value));
        Assert.Equal(0, PriorityHold.Value(Options(preempt: true), false, true, false)); // --vrrp-preempt: keepalived's own preemption
    }

    [Theory]
    [InlineData(150, 0, -1)]
    [InlineData(150, -1, -2)]
    [InlineData(150, 104, -1)]
    [InlineData(1, 0, 1)]
    [InlineData(254, 0, -1)]
    public void PriorityHold_Probe_ChangesTheEffectivePriority(int priority, int current, int probe)
    {
        Assert.Equal(probe, PriorityHold.Probe(priority, current));
        Assert.NotEqual(PriorityHold.Effective(priority, current), PriorityHold.Effective(priority, probe));
    }

    [Fact]
    public void Render_SameInputs_SameText()
    {
        Assert.Equal(KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.100")]), KeepalivedConfig.Render(Options(), [IPAddress.Parse("198.18.0.100")]));
    }
}
