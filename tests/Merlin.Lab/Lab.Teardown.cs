using System.Globalization;
using System.Text.RegularExpressions;
using Merlin.Testing;

namespace Merlin.Lab;

public sealed partial class Lab
{
    private const string NetnsDir = "/run/netns";
    // Run on the thread pool: blocking on async code from a test thread with a synchronization context
    // could otherwise wait for a continuation queued behind itself.
    private static readonly Lazy<string?> ProbeFailure = new(() => Task.Run(ProbeAsync).GetAwaiter().GetResult());
    private static readonly Lazy<Task> Swept = new(async () =>
    {
        try
        {
            await SweepStaleAsync();
        }
        catch (Exception e)
        {
            await Console.Error.WriteLineAsync($"lab sweeper: {e.Message}");
        }
    });

    /// <summary>
    /// Skips the running test (outside CI) or fails it (CI=true) unless this machine can build a lab: Linux,
    /// root, iproute2's <c>ip</c>, and network namespaces with veth and bridge support (probed once).
    /// </summary>
    public static void Require()
    {
        if (!OperatingSystem.IsLinux()) Requires.Missing("Linux (network namespaces)");
        Requires.Root();
        Requires.Command("ip", "apt-get install iproute2");
        if (ProbeFailure.Value is { } why) Requires.Missing($"network namespaces with veth and bridge: {why}");
    }

    /// <summary>Whether <see cref="Require"/> would pass (for code that is not a test).</summary>
    public static bool IsSupported =>
        OperatingSystem.IsLinux() && Environment.IsPrivilegedProcess && Requires.FindOnPath("ip") is not null && ProbeFailure.Value is null;

    private static async Task<string?> ProbeAsync()
    {
        var ns = $"ml{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(3))}-{Environment.ProcessId}-probe";
        try
        {
            var add = await LabCommand.RunAsync(["ip", "netns", "add", ns]);
            if (!add.Succeeded) return add.StandardError.Trim();
            var links = await LabCommand.RunAsync(["ip", "-n", ns, "-batch", "-"], "link add b0 type bridge\nlink add v0 type veth peer name v1\nlink set v1 master b0\n");
            return links.Succeeded ? null : links.StandardError.Trim();
        }
        catch (Exception e)
        {
            return e.Message;
        }
        finally
        {
            try
            {
                await LabCommand.RunAsync(["ip", "netns", "del", ns]);
            }
            catch (Exception)
            {
                // The sweeper removes it later.
            }
        }
    }

    /// <summary>
    /// Tears the lab down: kills every process it started and anything else still inside its namespaces
    /// (by PID), deletes the namespaces (their veths and bridges go with them) and the temp dir. Never throws;
    /// if a namespace cannot be removed it says so on stderr and the sweeper retries in a later run.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        try
        {
            await Task.WhenAll(_processes.Keys.Select(p => p.DisposeAsync().AsTask()));
        }
        catch (Exception e)
        {
            await Console.Error.WriteLineAsync($"{this}: stopping processes: {e.Message}");
        }
        try
        {
            var left = await RemoveNamespacesAsync(_namespaces);
            if (left.Count > 0) await Console.Error.WriteLineAsync($"{this}: could not remove namespaces {string.Join(", ", left)}");
        }
        catch (Exception e)
        {
            await Console.Error.WriteLineAsync($"{this}: removing namespaces: {e.Message}");
        }
        DeleteDirectory(TempPath);
        Live.TryRemove(this, out _);
    }

    /// <summary>Names in <c>ip netns list</c> (the files of /run/netns), optionally only those starting with <paramref name="prefix"/>.</summary>
    public static IReadOnlyList<string> ListNamespaces(string? prefix = null)
    {
        if (!Directory.Exists(NetnsDir)) return [];
        return Directory.GetFiles(NetnsDir).Select(Path.GetFileName).OfType<string>()
            .Where(n => prefix is null || n.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
    }

    [GeneratedRegex(@"^ml[0-9a-f]{6}-([0-9]{1,10})-[a-z0-9-]{1,20}$", RegexOptions.CultureInvariant)]
    private static partial Regex OurNamespace();

    [GeneratedRegex(@"^merlin-lab-ml[0-9a-f]{6}-([0-9]{1,10})$", RegexOptions.CultureInvariant)]
    private static partial Regex OurTempDir();

    /// <summary>
    /// The PID that created a lab namespace, parsed from its name (<c>ml&lt;6 hex&gt;-&lt;pid&gt;-&lt;host&gt;</c>),
    /// or null for a name that is not a lab's.
    /// </summary>
    public static int? CreatorPid(string namespaceName)
    {
        var m = OurNamespace().Match(namespaceName);
        return m.Success && int.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : null;
    }

    /// <summary>
    /// Removes what earlier runs left behind: namespaces named like a lab's whose creating process no longer
    /// exists (with any process still inside them) and their temp dirs. Namespaces of live processes and
    /// namespaces with other names are never touched. Runs once by itself before a process's first lab.
    /// Returns the namespaces removed.
    /// </summary>
    public static async Task<IReadOnlyList<string>> SweepStaleAsync()
    {
        using var held = await LockSweepsAsync();
        return await SweepStaleAsync(held);
    }

    /// <summary>The same sweep, by a caller that already holds the sweep lock (<see cref="LockSweepsAsync"/>).</summary>
    public static async Task<IReadOnlyList<string>> SweepStaleAsync(IDisposable heldLock)
    {
        ArgumentNullException.ThrowIfNull(heldLock);
        var stale = ListNamespaces().Where(n => CreatorPid(n) is { } pid && !Signal.IsAlive(pid)).ToList();
        if (stale.Count > 0)
        {
            var left = await RemoveNamespacesAsync(stale);
            stale = stale.Except(left).ToList();
        }
        try
        {
            foreach (var dir in Directory.GetDirectories(Path.GetTempPath(), "merlin-lab-ml*"))
            {
                var m = OurTempDir().Match(Path.GetFileName(dir));
                if (m.Success && int.TryParse(m.Groups[1].Value, CultureInfo.InvariantCulture, out var pid) && !Signal.IsAlive(pid)) DeleteDirectory(dir);
            }
        }
        catch (IOException)
        {
            // Best effort.
        }
        return stale;
    }

    private static Task EnsureSweptAsync() => Swept.Value;

    private static readonly string SweepLockPath = Path.Combine(Path.GetTempPath(), "merlin-lab-sweep.lock");

    /// <summary>
    /// Takes the machine-wide sweep lock (an exclusive lock on a file, so it holds across the test processes
    /// that run in parallel): while it is held no other lab process sweeps. Waits up to a minute for it.
    /// </summary>
    public static async Task<IDisposable> LockSweepsAsync()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (true)
        {
            try
            {
                return new FileStream(SweepLockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
        }
    }

    /// <summary>Kills every process inside the namespaces (by PID), deletes them; returns those still present.</summary>
    private static async Task<IReadOnlyList<string>> RemoveNamespacesAsync(IReadOnlyList<string> names)
    {
        for (var attempt = 0; ; attempt++)
        {
            var present = names.Where(n => File.Exists(Path.Combine(NetnsDir, n))).ToList();
            if (present.Count == 0 || attempt == 3) return present;

            var pids = new List<int>();
            foreach (var r in await Task.WhenAll(present.Select(n => LabCommand.RunAsync(["ip", "netns", "pids", n], timeout: TimeSpan.FromSeconds(10)))))
            {
                foreach (var line in r.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                {
                    if (int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 1 && pid != Environment.ProcessId) pids.Add(pid);
                }
            }
            foreach (var pid in pids) Signal.Send(pid, Signal.Kill);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(3);
            while (pids.Any(IsRunning) && DateTime.UtcNow < deadline) await Task.Delay(10);

            var batch = string.Join('\n', present.Select(n => $"netns del {n}")) + "\n";
            await LabCommand.RunAsync(["ip", "-force", "-batch", "-"], batch, TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>Alive and not a zombie (a killed process not yet reaped by its parent holds no namespace).</summary>
    private static bool IsRunning(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var close = stat.LastIndexOf(')');
            return close > 0 && close + 2 < stat.Length && stat[close + 2] != 'Z';
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static void DeleteDirectory(string path)
    {
        try
        {
            if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort; the sweeper retries.
        }
    }

    private static void TearDownAllOnExit()
    {
        var labs = Live.Keys.ToList();
        if (labs.Count == 0) return;
        try
        {
            Task.Run(() => Task.WhenAll(labs.Select(l => l.DisposeAsync().AsTask()))).Wait(TimeSpan.FromSeconds(20));
        }
        catch (Exception)
        {
            // Exiting anyway; the sweeper handles leftovers in the next run.
        }
    }
}
