namespace Merlin.Model;

/// <summary>What the health checks say of one real server.</summary>
public enum HealthVerdict
{
    /// <summary>No check, or no verdict yet (just started, or the check was just added).</summary>
    Unknown,
    Up,
    Down,
}
