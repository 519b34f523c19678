using System.Text.RegularExpressions;
using Merlin.Testing;

namespace Merlin.Packaging.Tests;

/// <summary>
/// The container images (deploy/container/*.Containerfile) as far as this machine can check them: no container
/// engine runs here and no base image can be pulled, so the test reads each Containerfile and checks it against
/// what scripts/package published (out/publish, the build context) — every COPY source is there, every link
/// points at a published program, the entrypoint is one of them and runs (<c>--version</c>), and every Debian
/// package it installs exists in the release its base image names.
/// </summary>
public sealed partial class ContainerImageTests
{
    public static TheoryData<string, string> Images => new()
    {
        { "merlin.Containerfile", "merlin" },
        { "merlin-k8s.Containerfile", "merlin-k8s" },
    };

    [Theory]
    [MemberData(nameof(Images))]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void Containerfile_CopiesWhatScriptsPackagePublished_AndItsEntrypointRuns(string file, string program)
    {
        var root = RepositoryRoot();
        var context = Path.Combine(root, "out", "publish");
        if (!File.Exists(Path.Combine(context, program, program)))
            Requires.Missing($"{context}/{program} (scripts/package publishes it; scripts/test runs it first)");
        var lines = Instructions(File.ReadAllText(Path.Combine(root, "deploy", "container", file)));

        Assert.Equal("FROM debian:bookworm-slim", lines.First(l => l.StartsWith("FROM ", StringComparison.Ordinal)));

        // COPY <dir in the context>/ <dir in the image>/: the image path of each published folder.
        var copies = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in lines.Where(l => l.StartsWith("COPY ", StringComparison.Ordinal)))
        {
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(parts.Length == 3, $"{file}: expected COPY <source> <destination>: {line}");
            var source = Path.Combine(context, parts[1].TrimEnd('/'));
            Assert.True(Directory.Exists(source) && Directory.EnumerateFiles(source).Any(), $"{file}: {line}: {source} is missing or empty");
            copies[parts[2].TrimEnd('/')] = source;
        }

        // ln -s <program in the image> <link>: each target is a published, executable program.
        var links = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (Match m in LinkPattern().Matches(string.Join('\n', lines)))
        {
            var target = m.Groups["target"].Value;
            var folder = copies.Keys.FirstOrDefault(d => target.StartsWith(d + "/", StringComparison.Ordinal));
            Assert.True(folder is not null, $"{file}: the link {m.Groups["link"].Value} points at {target}, which no COPY puts there");
            var published = Path.Combine(copies[folder!], target[(folder!.Length + 1)..]);
            Assert.True(File.Exists(published), $"{file}: {target} would be {published}, which scripts/package did not publish");
            Assert.True((File.GetUnixFileMode(published) & UnixFileMode.UserExecute) != 0, $"{published} is not executable");
            links[m.Groups["link"].Value] = published;
        }

        var entrypoint = EntrypointPattern().Match(string.Join('\n', lines));
        Assert.True(entrypoint.Success, $"{file}: no exec-form ENTRYPOINT [\"...\"]");
        Assert.True(links.TryGetValue(entrypoint.Groups["path"].Value, out var entry), $"{file}: the entrypoint {entrypoint.Groups["path"].Value} is not a link to a published program");
        Assert.Equal(program, Path.GetFileName(entry));
        var version = Regex.Match(File.ReadAllText(Path.Combine(root, "Directory.Build.props")), "<Version>([^<]+)</Version>").Groups[1].Value;
        var (code, stdout, stderr) = Run(entry!, ["--version"]);
        Assert.True(code == 0, $"{entry} --version: exit {code}: {stderr}");
        Assert.StartsWith(version, stdout.Trim());

        // The packages its RUN installs exist in the base image's release (this machine runs the same one).
        var install = lines.Single(l => l.Contains("apt-get install", StringComparison.Ordinal));
        var packages = Regex.Match(install, @"--no-install-recommends ([a-z0-9.+\- ]+?)(?: &&|$)").Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(packages);
        foreach (var package in packages)
            Assert.True(Run("apt-cache", ["show", "--no-all-versions", package]).Code == 0, $"{file}: Debian has no package {package}");
    }

    [Fact]
    public void ControllerImage_RunsAsAnUnprivilegedUser()
    {
        var lines = Instructions(File.ReadAllText(Path.Combine(RepositoryRoot(), "deploy", "container", "merlin-k8s.Containerfile")));
        var user = lines.Last(l => l.StartsWith("USER ", StringComparison.Ordinal));
        Assert.NotEqual("0", user["USER ".Length..].Split(':')[0]);
        Assert.DoesNotContain("root", user, StringComparison.Ordinal);
    }

    /// <summary>The Containerfile's instructions, comments dropped and continuation lines joined.</summary>
    private static List<string> Instructions(string text)
    {
        var joined = Regex.Replace(text, @"\\\n\s*", " ");
        return [.. joined.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#'))];
    }

    [GeneratedRegex(@"ln -s (?<target>/\S+) (?<link>/\S+)")]
    private static partial Regex LinkPattern();

    [GeneratedRegex(@"ENTRYPOINT \[""(?<path>[^""]+)""")]
    private static partial Regex EntrypointPattern();

    private static string RepositoryRoot() => Shell.RepositoryRoot();

    private static (int Code, string Out, string Err) Run(string file, string[] args) => Shell.Run(file, args, TimeSpan.FromMinutes(2));
}
