namespace Merlin.Announcer;

/// <summary>
/// What the supervisors of an announcer's engine (keepalived, gobgpd) share: the restart backoff's bounds and pid files.
/// Starting, recognising and stopping processes is <see cref="Merlin.Linux.ProgramRunner"/>'s.
/// </summary>
internal static class EngineProcess
{
    public static readonly TimeSpan MinBackoff = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);
    /// <summary>An engine that ran this long before dying is restarted after the shortest backoff again.</summary>
    public static readonly TimeSpan StableRun = TimeSpan.FromSeconds(60);
    /// <summary>How long SIGTERM has before SIGKILL.</summary>
    public static readonly TimeSpan StopWait = Merlin.Linux.ProgramRunner.StopWait;

    public static int? ReadPid(string path)
    {
        try { return int.TryParse(File.ReadAllText(path).Trim(), out var pid) && pid > 1 ? pid : null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}
