using System.Net;

namespace Merlin.Daemon;

/// <summary>
/// Which VIPs this node should announce, from what the reconcile passes report: a VIP is added only after
/// a pass that programmed everything (a node never attracts traffic it cannot forward) and removed as soon
/// as its service is gone; nothing while the node is drained, nor once the store has been unreachable for
/// longer than the grace (counted from the first pass that found it so; until then the node keeps
/// announcing and forwarding with its last state). A pass that programmed everything while some DSR real
/// server's MAC is still unknown does not add VIPs either: that node's Maglev table would lack the server
/// and send flows elsewhere than its peers do. A server unknown for longer than
/// <see cref="UnresolvedLimit"/> stops holding VIPs back (a dead server must not keep a node out for good).
/// </summary>
internal sealed class AnnouncePolicy(TimeSpan? storeGrace, TimeProvider time)
{
    private IReadOnlyCollection<IPAddress> _programmed = [];
    private long? _unreachableSince;
    private long? _unresolvedSince;

    public static readonly TimeSpan UnresolvedLimit = TimeSpan.FromSeconds(10);

    /// <summary>A pass ended. <paramref name="desired"/>: the VIPs of the desired state it read (null if it read none);
    /// <paramref name="unresolvedServers"/>: real servers the dataplane left out because their MAC is unknown yet.</summary>
    public void OnPass(bool storeReachable, bool converged, IReadOnlyCollection<IPAddress>? desired, bool unresolvedServers = false)
    {
        if (!storeReachable)
        {
            _unreachableSince ??= time.GetTimestamp();
            return;
        }
        _unreachableSince = null;
        if (desired is null) return;
        if (converged && unresolvedServers)
        {
            _unresolvedSince ??= time.GetTimestamp();
            converged = time.GetElapsedTime(_unresolvedSince.Value) > UnresolvedLimit;
        }
        else if (!unresolvedServers)
        {
            _unresolvedSince = null;
        }
        _programmed = converged ? desired : _programmed.Where(desired.Contains).ToList();
    }

    /// <summary>What to announce now, and why nothing is (null when the programmed VIPs are announced).</summary>
    public (IReadOnlyCollection<IPAddress> Vips, string? Withheld) Decide(bool drained)
    {
        if (drained) return ([], "the node is drained (meradm node undrain ends it)");
        if (storeGrace is { } grace && _unreachableSince is { } since && time.GetElapsedTime(since) is var lost && lost > grace)
            return ([], $"the store has been unreachable for {lost.TotalSeconds:0} s (grace {grace.TotalSeconds:0} s)");
        return (_programmed, null);
    }
}
