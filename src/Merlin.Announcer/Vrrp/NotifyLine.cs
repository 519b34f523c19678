namespace Merlin.Announcer.Vrrp;

/// <summary>
/// One line keepalived writes to its notify FIFO: <c>INSTANCE "merlin_51" MASTER 150</c> (also <c>GROUP</c>
/// for sync groups and <c>VS</c>/<c>RS</c> from the checker, which merlin does not run).
/// </summary>
public sealed record NotifyLine(string Kind, string Name, string State, int? Priority)
{
    /// <summary>The parsed line, or null when it is not of that form (the caller logs and ignores it).</summary>
    public static NotifyLine? Parse(string? line)
    {
        if (string.IsNullOrWhiteSpace(line)) return null;
        var text = line.Trim();
        var space = text.IndexOf(' ');
        if (space <= 0) return null;
        var kind = text[..space];
        var rest = text[(space + 1)..].TrimStart();
        string name;
        if (rest.StartsWith('"'))
        {
            var close = rest.IndexOf('"', 1);
            if (close < 0) return null;
            name = rest[1..close];
            rest = rest[(close + 1)..];
        }
        else
        {
            var end = rest.IndexOf(' ');
            if (end < 0) return null;
            name = rest[..end];
            rest = rest[end..];
        }
        var words = rest.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (name.Length == 0 || words.Length is 0 or > 2) return null;
        int? priority = null;
        if (words.Length == 2)
        {
            if (!int.TryParse(words[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var p)) return null;
            priority = p;
        }
        return new NotifyLine(kind, name, words[0], priority);
    }

    /// <summary>
    /// The VRRP role this line reports, or null for states that are not one (e.g. DELETED). A priority change
    /// (<c>MASTER_PRIORITY</c>, <c>BACKUP_PRIORITY</c>, with <c>notify_priority_changes</c>) reports the current
    /// role too; keepalived says BACKUP_PRIORITY for any state but MASTER.
    /// </summary>
    public AnnouncerRole? Role => State switch
    {
        "MASTER" or "MASTER_PRIORITY" => AnnouncerRole.Master,
        "BACKUP" or "BACKUP_PRIORITY" => AnnouncerRole.Backup,
        "FAULT" => AnnouncerRole.Fault,
        "STOP" => AnnouncerRole.Stopped,
        _ => null,
    };

    /// <summary>A priority change rather than a state change.</summary>
    public bool IsPriorityChange => State is "MASTER_PRIORITY" or "BACKUP_PRIORITY";
}
