namespace Merlin.Announcer.Vrrp;

/// <summary>
/// The number merlin writes to keepalived's tracked priority file, which keepalived adds to the configured
/// priority (the result limited to 1–254; below -253 the instance goes to FAULT). This is how merlin
/// implements "nopreempt after the first election": keepalived itself runs with preemption on, so a higher
/// priority replaces a MASTER that advertises its configured priority, and a MASTER that must keep the VIPs
/// advertises 254, which no node preempts (an equal priority never does).
/// </summary>
public static class PriorityHold
{
    /// <summary>The instance goes to FAULT: it releases the VIPs with a priority-0 advert.</summary>
    public const int Fault = -254;

    /// <summary>
    /// What the file should hold: <see cref="Fault"/> while drained; otherwise raise a MASTER to 254 unless
    /// preemption is configured or it won a first election less than the start window ago; 0 for the rest.
    /// </summary>
    public static int Value(VrrpOptions o, bool drained, bool master, bool firstElectionWindow) =>
        drained ? Fault
        : master && !o.Preempt && !firstElectionWindow ? 254 - o.Priority
        : 0;

    /// <summary>The effective priority keepalived computes for <paramref name="value"/> (0 for FAULT).</summary>
    public static int Effective(int priority, int value) => value < -253 ? 0 : Math.Clamp(priority + value, 1, 254);

    /// <summary>
    /// A value whose effective priority differs from <paramref name="current"/>'s, so that writing it makes keepalived
    /// report its state (with notify_priority_changes); used to learn the state of an adopted keepalived.
    /// </summary>
    public static int Probe(int priority, int? current)
    {
        var now = Effective(priority, current ?? 0);
        foreach (var v in new[] { -1, -2, 1, 2 })
            if (Effective(priority, v) != now && Effective(priority, v) > 0) return v;
        return -1;
    }
}
