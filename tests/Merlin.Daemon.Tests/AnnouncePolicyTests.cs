using System.Net;
using Microsoft.Extensions.Time.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>Which VIPs a node announces: programmed ones only, none while drained, none after the store grace.</summary>
public class AnnouncePolicyTests
{
    private static readonly IPAddress A = IPAddress.Parse("198.18.0.100"), B = IPAddress.Parse("198.18.0.101"), C = IPAddress.Parse("2001:db8::100");

    [Fact]
    public void AVipIsAddedOnlyByAPassThatProgrammedEverything_ButRemovedByAnyPassThatReadTheStore()
    {
        var policy = new AnnouncePolicy(null, new FakeTimeProvider());
        Assert.Empty(policy.Decide(false).Vips);
        policy.OnPass(storeReachable: true, converged: false, [A]);
        Assert.Empty(policy.Decide(false).Vips);                   // A's service failed to program: not announced
        policy.OnPass(true, true, [A, B]);
        Assert.Equal([A, B], policy.Decide(false).Vips);
        policy.OnPass(true, false, [B, C]);                        // A gone, C new but this pass failed somewhere
        Assert.Equal([B], policy.Decide(false).Vips);
        policy.OnPass(true, true, [B, C]);
        Assert.Equal([B, C], policy.Decide(false).Vips);
        policy.OnPass(true, true, []);
        Assert.Empty(policy.Decide(false).Vips);
    }

    [Fact]
    public void Drained_AnnouncesNothing_AndSaysWhy_UntilUndrained()
    {
        var policy = new AnnouncePolicy(null, new FakeTimeProvider());
        policy.OnPass(true, true, [A]);
        var (vips, why) = policy.Decide(drained: true);
        Assert.Empty(vips);
        Assert.StartsWith("the node is drained", why);
        Assert.Equal([A], policy.Decide(false).Vips);
        Assert.Null(policy.Decide(false).Withheld);
    }

    [Fact]
    public void StoreLoss_KeepsTheLastVipsForTheGrace_ThenWithdraws_AndTheNextReadAnnouncesAgain()
    {
        var clock = new FakeTimeProvider();
        var policy = new AnnouncePolicy(TimeSpan.FromSeconds(3), clock);
        policy.OnPass(true, true, [A, C]);
        clock.Advance(TimeSpan.FromSeconds(30));                    // a long quiet time with the store fine counts for nothing
        policy.OnPass(false, false, null);
        clock.Advance(TimeSpan.FromSeconds(2));
        policy.OnPass(false, false, null);                          // still failing: the grace counts from the first failure
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal([A, C], policy.Decide(false).Vips);            // exactly the grace: still announced
        clock.Advance(TimeSpan.FromMilliseconds(1));
        var (vips, why) = policy.Decide(false);
        Assert.Empty(vips);
        Assert.Equal("the store has been unreachable for 3 s (grace 3 s)", why);
        policy.OnPass(true, true, [A, C]);
        Assert.Equal([A, C], policy.Decide(false).Vips);
        Assert.Null(policy.Decide(false).Withheld);
    }

    [Fact]
    public void WithoutAGrace_StoreLossNeverWithdraws()
    {
        var clock = new FakeTimeProvider();
        var policy = new AnnouncePolicy(null, clock);
        policy.OnPass(true, true, [A]);
        policy.OnPass(false, false, null);
        clock.Advance(TimeSpan.FromHours(1));
        Assert.Equal([A], policy.Decide(false).Vips);
    }

    [Fact]
    public void AServerWhoseMacIsUnknown_HoldsNewVipsBack_ForAtMostTheLimit()
    {
        var clock = new FakeTimeProvider();
        var policy = new AnnouncePolicy(null, clock);
        policy.OnPass(true, true, [A], unresolvedServers: true);
        Assert.Empty(policy.Decide(false).Vips);                    // its table would lack a server its peers have
        clock.Advance(TimeSpan.FromSeconds(5));
        policy.OnPass(true, true, [A], unresolvedServers: false);   // resolved
        Assert.Equal([A], policy.Decide(false).Vips);

        policy.OnPass(true, true, [A, B], unresolvedServers: true); // a new server, not resolved: B waits, A stays
        Assert.Equal([A], policy.Decide(false).Vips);
        clock.Advance(AnnouncePolicy.UnresolvedLimit);
        policy.OnPass(true, true, [A, B], unresolvedServers: true);
        Assert.Equal([A], policy.Decide(false).Vips);
        clock.Advance(TimeSpan.FromMilliseconds(1));
        policy.OnPass(true, true, [A, B], unresolvedServers: true); // a dead server must not keep B out for good
        Assert.Equal([A, B], policy.Decide(false).Vips);
    }
}
