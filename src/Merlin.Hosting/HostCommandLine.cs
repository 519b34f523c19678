using System.CommandLine;

namespace Merlin.Hosting;

/// <summary>How merlin-agent and merlin-k8s begin: their flags parsed, wrong ones refused as the CLI refuses them.</summary>
public static class HostCommandLine
{
    /// <summary>
    /// Parses <paramref name="args"/>. A wrong command line prints each error as "<paramref name="program"/>: …" and a
    /// pointer to --help on stderr, and exits 2; --help and --version print and exit 0. Otherwise <c>Exit</c> is null and
    /// the program goes on with <c>Parsed</c>.
    /// </summary>
    public static async Task<(ParseResult Parsed, int? Exit)> ParseAsync(RootCommand root, string program, string[] args)
    {
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (var e in parsed.Errors) Console.Error.WriteLine($"{program}: {e.Message}");
            Console.Error.WriteLine($"Run '{program} --help' for usage.");
            return (parsed, 2);
        }
        if (args.Any(a => a is "--help" or "-h" or "-?" or "--version")) return (parsed, await parsed.InvokeAsync());
        return (parsed, null);
    }
}
