namespace Merlin.Testing;

/// <summary>
/// Preconditions of tests that need something from the machine. Outside CI a missing requirement skips
/// the test; in CI (<c>CI=true</c>) it fails it, so a green CI run never hides a test that did not run.
/// </summary>
public static class Requires
{
    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>Debian's etcd server binary (package etcd-server).</summary>
    public static void Etcd() => Command("etcd", "apt-get install etcd-server");

    /// <summary>The test process runs as root (network namespaces, IPVS, nftables).</summary>
    public static void Root()
    {
        if (!Environment.IsPrivilegedProcess) Missing("root privileges (run the tests as root)");
    }

    /// <summary>An executable on PATH; <paramref name="install"/> tells how to get it.</summary>
    public static void Command(string name, string install)
    {
        if (FindOnPath(name) is null) Missing($"{name} on PATH ({install})");
    }

    /// <summary>Skips (outside CI) or fails (in CI) the running test, naming what is missing.</summary>
    public static void Missing(string what)
    {
        if (InCi) Assert.Fail($"Requirement missing: {what} (CI=true, so this fails instead of skipping)");
        Assert.Skip($"Requirement missing: {what}");
    }

    public static string? FindOnPath(string name)
    {
        if (name.Contains('/')) return File.Exists(name) ? name : null;
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var dir in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}
