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

    /// <summary>
    /// A kernel with IPVS loaded (/proc/net/ip_vs). The CI host's kernel has none, so this skips even with
    /// CI=true: these tests are meant to run inside the qemu guest, whose harness sets
    /// MERLIN_REQUIRE_IPVS=1 to turn a missing IPVS into a failure there.
    /// </summary>
    public static void Ipvs()
    {
        if (File.Exists("/proc/net/ip_vs")) return;
        const string what = "IPVS in the running kernel (/proc/net/ip_vs is absent; these tests run in the qemu guest)";
        if (Environment.GetEnvironmentVariable("MERLIN_REQUIRE_IPVS") == "1")
            Assert.Fail($"Requirement missing: {what} (MERLIN_REQUIRE_IPVS=1, so this fails instead of skipping)");
        Assert.Skip($"Requirement missing: {what}");
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
