using System.Diagnostics;

namespace Merlin.Packaging.Tests;

/// <summary>What both package tests need from the machine: the repository they run in, and programs run to their end.</summary>
internal static class Shell
{
    public static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Merlin.slnx"))) return dir.FullName;
        throw new InvalidOperationException($"no Merlin.slnx above {AppContext.BaseDirectory}");
    }

    /// <summary>Runs <paramref name="file"/> to its end (dpkg without questions); killed and failed after <paramref name="limit"/>.</summary>
    public static (int Code, string Out, string Err) Run(string file, string[] args, TimeSpan limit)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DEBIAN_FRONTEND"] = "noninteractive";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(limit))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)}: no exit within {limit.TotalMinutes:0} min");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
