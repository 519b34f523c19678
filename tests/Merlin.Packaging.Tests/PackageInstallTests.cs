using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Merlin.Testing;

namespace Merlin.Packaging.Tests;

/// <summary>
/// The Debian packages as an operator meets them, on this machine: scripts/package builds them, lintian finds no error,
/// systemd-analyze verifies the installed units, dpkg installs them, the installed daemon runs with the packaged
/// configuration (inside a scratch network namespace, with the unit's capabilities only, its store and state in a temp
/// dir) and the installed meradm drives it; an upgrade to a rebuilt package keeps the store and the kernel's state,
/// remove keeps a store in /var/lib/merlin, purge leaves nothing. Needs root; everything it installs or makes is
/// purged and deleted at the end, even on failure. It packs what out/publish holds (scripts/test publishes it first).
/// </summary>
public sealed partial class PackageInstallTests
{
    private static readonly string[] Packages = ["merlin", "merlin-agent", "merlin-k8s"];
    private static readonly string[] Units = ["merlin.service", "merlin-agent.service", "merlin-k8s.service"];
    private static readonly string[] Accounts = ["merlin-admin", "merlin-agent", "merlin-k8s"];

    /// <summary>Everything the packages install; none may exist before (the test would delete it), none after a purge.</summary>
    private static readonly string[] Footprint =
    [
        "/etc/merlin", "/var/lib/merlin-agent",
        "/usr/lib/merlin", "/usr/lib/merlin-agent", "/usr/lib/merlin-k8s",
        "/usr/bin/merlin", "/usr/bin/meradm", "/usr/bin/merlin-agent", "/usr/bin/merlin-k8s",
        "/lib/systemd/system/merlin.service", "/lib/systemd/system/merlin-agent.service", "/lib/systemd/system/merlin-k8s.service",
        "/usr/share/doc/merlin", "/usr/share/doc/merlin-agent", "/usr/share/doc/merlin-k8s",
        "/usr/share/lintian/overrides/merlin", "/usr/share/lintian/overrides/merlin-agent", "/usr/share/lintian/overrides/merlin-k8s",
        "/usr/share/man/man8/merlin.8.gz", "/usr/share/man/man1/meradm.1.gz", "/usr/share/man/man8/merlin-agent.8.gz", "/usr/share/man/man8/merlin-k8s.8.gz",
        "/usr/share/bash-completion/completions/meradm", "/usr/share/zsh/vendor-completions/_meradm",
    ];

    /// <summary>The packaged store's directory, which purge deletes. Other programs on a developer's machine may use it
    /// (it is the daemon's default): the test runs only where it is absent.</summary>
    private const string StateDir = "/var/lib/merlin";

    private static ITestOutputHelper? Log => TestContext.Current.TestOutputHelper;

    [Fact]
    public async Task Packages_InstallRunUpgradeRemovePurge_WithoutDroppingTheKernelState()
    {
        Requires.Root();
        foreach (var (tool, package) in new[] { ("dpkg-deb", "dpkg"), ("lintian", "lintian"), ("systemd-analyze", "systemd"), ("setpriv", "util-linux"), ("nft", "nftables"), ("curl", "curl"), ("man", "man-db") })
            Requires.Command(tool, $"apt-get install {package}; scripts/setup installs it");
        if (Packages.FirstOrDefault(IsInstalled) is { } installed)
            Requires.Missing($"a machine without the {installed} package (this test installs and purges it)");
        if (Footprint.FirstOrDefault(Exists) is { } present)
            Requires.Missing($"a machine without {present} (this test deletes what the packages leave there)");
        var accountsBefore = Accounts.Where(AccountExists).ToHashSet();
        if (Exists(StateDir))
            Requires.Missing($"a machine without {StateDir} (another merlin's state; dpkg --purge merlin would delete it)");

        using var work = new TempDir("packages");
        var socket = work.File("merlin.sock");
        Process? daemon = null;
        try
        {
            var v1 = Package(work.File("v1"), revision: 1);
            var v2 = Package(work.File("v2"), revision: 2);

            var lintian = Run("lintian", ["--fail-on", "error", .. v1]);
            Assert.True(lintian.Code == 0, $"lintian found errors:\n{lintian.Out}{lintian.Err}");

            Succeeds("dpkg", ["-i", .. v1]);
            foreach (var unit in Units)
            {
                var verify = Run("systemd-analyze", ["verify", $"/lib/systemd/system/{unit}"]);
                Assert.True(verify.Code == 0 && verify.Err.Trim() == "", $"systemd-analyze verify {unit}: exit {verify.Code}\n{verify.Out}{verify.Err}");
            }
            Assert.Equal("0.1.0-1", Version("merlin"));
            Assert.Contains("/etc/merlin/merlin.json", Succeeds("dpkg-query", ["-W", "-f", "${Conffiles}", "merlin"]));
            Assert.Matches(@"^\d+\.\d+\.\d+", Succeeds("/usr/bin/merlin", ["--version"]));
            Assert.Equal(Succeeds("/usr/bin/merlin", ["--version"]), Succeeds("/usr/bin/meradm", ["--version"]));
            // What man and the shell show an operator: pages for every program, meradm's commands completed by meradm itself.
            Assert.Contains("service add", Succeeds("man", ["-P", "cat", "-l", "/usr/share/man/man1/meradm.1.gz"]));
            Assert.Contains("--store-backend", Succeeds("man", ["-P", "cat", "-l", "/usr/share/man/man8/merlin.8.gz"]));
            Assert.Contains("--drain-period", Succeeds("man", ["-P", "cat", "-l", "/usr/share/man/man8/merlin-agent.8.gz"]));
            Assert.Contains("--merlin-api", Succeeds("man", ["-P", "cat", "-l", "/usr/share/man/man8/merlin-k8s.8.gz"]));
            Assert.Equal("server\nservice", Succeeds("bash", ["-c",
                "source /usr/share/bash-completion/completions/meradm; COMP_LINE='meradm se'; COMP_POINT=9; COMP_WORDS=(meradm se); COMP_CWORD=1; " +
                "PATH=/usr/bin:$PATH _meradm; printf '%s\\n' \"${COMPREPLY[@]}\""]));

            using var ns = new ScratchNamespace("pkg");
            // The DSR interface: a veth pair inside the namespace (this kernel has no dummy driver).
            ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
            ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "d0", "up"]);
            ScratchNamespace.Run("ip", ["-n", ns.Name, "link", "set", "d1", "up"]);

            daemon = await StartDaemonAsync(ns, work);
            Meradm(socket, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "mh", "-b", "mh-port");
            Meradm(socket, "server", "add", "web", "198.18.1.21:80", "-w", "1", "-f", "route");
            Assert.Contains("198.18.1.21:80", Meradm(socket, "list"));
            // Two operations, the service's and the server's (one pass each when the server comes after the pass that
            // made the service): stopping after the first would leave the restarted daemon the second to apply.
            await WaitForAsync(() => Status(ns, "operationsApplied") >= 2 && ns.Exec("nft", "list", "tables").Contains("table netdev merlin"), "the dataplane programmed");
            var ruleset = ns.Exec("nft", "list", "table", "netdev", "merlin");
            await StopAsync(daemon);
            daemon = null;
            Assert.Equal(ruleset, ns.Exec("nft", "list", "table", "netdev", "merlin")); // a stopped daemon leaves the kernel programmed

            // The upgrade: dpkg replaces the files; the restarted daemon finds the store and changes nothing in the kernel.
            Succeeds("dpkg", ["-i", .. v2]);
            Assert.Equal("0.1.0-2", Version("merlin"));
            daemon = await StartDaemonAsync(ns, work);
            Assert.Contains("198.18.1.21:80", Meradm(socket, "list"));
            await WaitForAsync(() => Status(ns, "reconcilePasses") > 0, "the restarted daemon's first pass");
            Assert.Equal(0, Status(ns, "operationsApplied")); // its first pass found the kernel as the last daemon left it
            Assert.Equal(ruleset, ns.Exec("nft", "list", "table", "netdev", "merlin"));
            await StopAsync(daemon);
            daemon = null;

            // The packaged daemon's store where the package keeps it, to see what remove and purge do with it.
            var store = Path.Combine(StateDir, "merlin.db");
            Directory.CreateDirectory(StateDir);
            File.Copy(work.File("merlin.db"), store);
            Succeeds("dpkg", ["--remove", .. Packages]);
            Assert.All(Packages, p => Assert.False(IsInstalled(p), $"{p} is still installed after dpkg --remove"));
            Assert.False(Exists("/usr/bin/merlin"), "/usr/bin/merlin is left after dpkg --remove");
            Assert.False(Exists("/usr/lib/merlin"), "/usr/lib/merlin is left after dpkg --remove");
            Assert.True(File.Exists(store), $"dpkg --remove deleted the store {store}");
            Assert.True(File.Exists("/etc/merlin/merlin.json"), "dpkg --remove deleted the configuration (only purge may)");

            Succeeds("dpkg", ["--purge", .. Packages]);
            var left = Footprint.Where(Exists).ToList();
            Assert.True(left.Count == 0, $"dpkg --purge left {string.Join(", ", left)}");
            Assert.False(Exists(StateDir), $"dpkg --purge left {StateDir}");
            Assert.All(Packages, p => Assert.Equal("", Run("dpkg-query", ["-W", "-f", "${Status}", p]).Out.Trim()));
        }
        finally
        {
            if (daemon is not null)
            {
                try { daemon.Kill(); } catch (InvalidOperationException) { /* already gone */ }
                daemon.Dispose();
            }
            Run("dpkg", ["--purge", .. Packages]);
            foreach (var path in Footprint)
            {
                if (Directory.Exists(path) && !IsSymlink(path)) Directory.Delete(path, recursive: true);
                else if (Exists(path)) File.Delete(path);
            }
            if (Directory.Exists(StateDir)) Directory.Delete(StateDir, recursive: true);
            foreach (var account in Accounts.Where(a => !accountsBefore.Contains(a) && AccountExists(a)))
                Run(account == "merlin-admin" ? "delgroup" : "deluser", ["--system", "--quiet", account]);
        }
    }

    /// <summary>
    /// The installed /usr/bin/merlin with the packaged /etc/merlin/merlin.json (its store, state and socket moved to
    /// <paramref name="work"/>), in <paramref name="ns"/>, holding only the
    /// capabilities the packaged unit grants (its CapabilityBoundingSet, as systemd would), the nftables dataplane on a
    /// veth interface. Returns once the installed meradm gets an answer on the Unix socket and /readyz says ready.
    /// </summary>
    private static async Task<Process> StartDaemonAsync(ScratchNamespace ns, TempDir work)
    {
        var unit = await File.ReadAllTextAsync("/lib/systemd/system/merlin.service", TestContext.Current.CancellationToken);
        var caps = CapabilityLine().Match(unit).Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(c => "+" + c["CAP_".Length..].ToLowerInvariant());
        var start = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in (string[])["netns", "exec", ns.Name, "setpriv", $"--bounding-set=-all,{string.Join(',', caps)}", "--",
                     "/usr/bin/merlin", "--config", "/etc/merlin/merlin.json", "--store-path", work.File("merlin.db"), "--state-dir", work.File("state"),
                     "--unix-socket", work.File("merlin.sock"), "--dataplane", "nftables", "--interface", "d0", "--hash-seed", "0x5eed1234"])
            start.ArgumentList.Add(arg);
        var process = Process.Start(start)!;
        var output = new StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await WaitForAsync(() =>
            {
                Assert.False(process.HasExited, $"merlin exited with {(process.HasExited ? process.ExitCode : 0)}:\n{Text(output)}");
                return Run("/usr/bin/meradm", ["--unix-socket", work.File("merlin.sock"), "status"]).Code == 0
                       && Run("ip", ["netns", "exec", ns.Name, "curl", "-sf", "http://127.0.0.1:4283/readyz"]).Code == 0;
            }, "the installed daemon ready");
        }
        catch
        {
            if (!process.HasExited) process.Kill();
            process.Dispose();
            throw;
        }
        return process;

        static string Text(StringBuilder b) { lock (b) return b.ToString(); }
    }

    /// <summary>SIGTERM, as systemctl stop sends; the daemon exits 0.</summary>
    private static async Task StopAsync(Process daemon)
    {
        Succeeds("kill", ["-TERM", daemon.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        limit.CancelAfter(TimeSpan.FromSeconds(30));
        await daemon.WaitForExitAsync(limit.Token);
        Assert.Equal(0, daemon.ExitCode);
        daemon.Dispose();
    }

    /// <summary>A counter of this daemon process from its /status: reconcilePasses, or operationsApplied (to the dataplane).</summary>
    private static long Status(ScratchNamespace ns, string counter)
    {
        var status = ns.Exec("curl", "-sf", "http://127.0.0.1:4283/status");
        var match = Regex.Match(status, $"\"{counter}\": \"?(\\d+)");
        // Protobuf's JSON leaves out a counter that is 0.
        return match.Success ? long.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
    }

    /// <summary>The packages, built from what out/publish holds (scripts/test publishes it first), or published here when it is empty.</summary>
    private static string[] Package(string outDir, int revision)
    {
        var root = RepositoryRoot();
        var published = Directory.Exists(Path.Combine(root, "out", "publish", "merlin-k8s"));
        var watch = Stopwatch.StartNew();
        Succeeds(Path.Combine(root, "scripts", "package"), [.. published ? ["--reuse-publish"] : Array.Empty<string>(), "--fast", "--revision", $"{revision}", "--out", outDir]);
        Log?.WriteLine($"scripts/package {(published ? "--reuse-publish " : "")}--fast --revision {revision}: {watch.Elapsed.TotalSeconds:0} s");
        return [.. Packages.Select(p => Path.Combine(outDir, $"{p}_0.1.0-{revision}_amd64.deb"))];
    }

    private static string RepositoryRoot() => Shell.RepositoryRoot();

    private static string Meradm(string socket, params string[] args)
    {
        var (code, stdout, stderr) = Run("/usr/bin/meradm", ["--unix-socket", socket, .. args]);
        Assert.True(code == 0, $"meradm {string.Join(' ', args)}: exit {code}: {stderr}");
        return stdout;
    }

    private static Task WaitForAsync(Func<bool> condition, string what) =>
        Poll.UntilAsync(condition, what, TimeSpan.FromSeconds(90), interval: TimeSpan.FromMilliseconds(250), ct: TestContext.Current.CancellationToken);

    private static string Version(string package) => Succeeds("dpkg-query", ["-W", "-f", "${Version}", package]);

    private static bool IsInstalled(string package) =>
        Run("dpkg-query", ["-W", "-f", "${Status}", package]).Out.Contains("installed", StringComparison.Ordinal)
        && !Run("dpkg-query", ["-W", "-f", "${Status}", package]).Out.Contains("not-installed", StringComparison.Ordinal);

    private static bool AccountExists(string name) => Run("getent", ["group", name]).Code == 0 || Run("getent", ["passwd", name]).Code == 0;

    private static bool Exists(string path) => File.Exists(path) || Directory.Exists(path) || IsSymlink(path);

    private static bool IsSymlink(string path) => new FileInfo(path) is { LinkTarget: not null };

    private static string Succeeds(string file, string[] args)
    {
        var (code, stdout, stderr) = Run(file, args);
        Assert.True(code == 0, $"{file} {string.Join(' ', args)}: exit {code}\n{stdout}{stderr}");
        return stdout.Trim();
    }

    private static (int Code, string Out, string Err) Run(string file, string[] args) => Shell.Run(file, args, TimeSpan.FromMinutes(15));

    [GeneratedRegex(@"^CapabilityBoundingSet=(.*)$", RegexOptions.Multiline)]
    private static partial Regex CapabilityLine();
}
