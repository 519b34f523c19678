using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>How the merlin process ends when it cannot start: one line naming the flag, and a documented exit code (docs/operations.md).</summary>
public sealed class StartupTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private readonly TempDir _dir = new("startup");

    [Fact]
    public async Task StateDirIsAFile_ExitsWith2_NamingTheFlag()
    {
        var file = _dir.File("state-file");
        File.WriteAllText(file, "not a directory");

        var (code, _, err) = await MerlinProcess.RunAsync(Limit, [.. MerlinProcess.Contained(_dir.Path), "--state-dir", file]);

        Assert.Equal(2, code);
        Assert.Equal($"merlin: --state-dir: {file} is a file, not a directory", err.Trim());
    }

    public void Dispose() => _dir.Dispose();
}
