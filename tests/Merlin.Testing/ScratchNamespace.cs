using System.Diagnostics;

namespace Merlin.Testing;

/// <summary>
/// An empty network namespace for one test (<c>ip netns add</c>), with <c>lo</c> up — IPVS refuses real
/// servers in a namespace without a local route table. Kernel state such as the IPVS table and its
/// sysctls is per namespace, so tests in their own namespaces cannot see each other and may run in
/// parallel. Names carry a per-run random part; Dispose deletes the namespace (and what is in it).
/// </summary>
public sealed class ScratchNamespace : IDisposable
{
    public ScratchNamespace(string label)
    {
        Name = $"mt-{label}-{Guid.NewGuid().ToString("N")[..8]}";
        Ip($"netns add {Name}");
        try
        {
            Ip($"-n {Name} link set lo up");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string Name { get; }

    /// <summary>The namespace as /proc/*/ns/net links name it (<c>net:[inode]</c>), as a process inside it sees its own.</summary>
    public string Link => _link ??= Exec("readlink", "/proc/self/ns/net").Trim();

    private string? _link;

    /// <summary>Runs a command inside the namespace (<c>ip netns exec</c>) and returns its standard output; throws on a non-zero exit.</summary>
    public string Exec(string command, params string[] args) => Run("ip", ["netns", "exec", Name, command, .. args]);

    public void Dispose()
    {
        try { Ip($"netns del {Name}"); }
        catch (InvalidOperationException) { /* already gone */ }
    }

    public override string ToString() => Name;

    private static void Ip(string args) => Run("ip", args.Split(' '));

    public static string Run(string file, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"{file} {string.Join(' ', start.ArgumentList)}: no exit within 30 s");
        }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', start.ArgumentList)}: exit {process.ExitCode}: {stderr.Result.Trim()}");
        return stdout.Result;
    }
}
