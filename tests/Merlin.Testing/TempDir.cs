namespace Merlin.Testing;

/// <summary>A fresh directory under the system temp dir, deleted with everything in it on Dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir(string label = "test")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"merlin-{label}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    /// <summary>A path inside the directory (not created).</summary>
    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            if (Directory.Exists(Path)) Directory.Delete(Path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover temp dir must not fail a test.
        }
    }

    public override string ToString() => Path;
}
