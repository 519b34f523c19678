using Merlin.Daemon;

// Exit codes (docs/operations.md, "Start-up order and exit codes"): 0 stopped; 2 a flag, a file it names or a port it names cannot be
// used — one line on stderr naming the flag, and nothing done to the kernel or the store; 1 anything else.
DaemonOptions options;
try
{
    if (args.Contains("--help") || args.Contains("-h"))
    {
        Console.WriteLine("merlin: the Merlin load-balancer daemon\n\nFlags (also MERLIN_<FLAG> environment variables, or a JSON --config file):");
        foreach (var flag in DaemonOptions.Flags.Keys) Console.WriteLine($"  {flag}");
        Console.WriteLine("  --version\n  --help");
        return 0;
    }
    if (args.Contains("--version"))
    {
        Console.WriteLine(DaemonOptions.Version);
        return 0;
    }
    options = DaemonOptions.From(DaemonOptions.BuildConfiguration(args));
}
catch (OptionsException e)
{
    Console.Error.WriteLine($"merlin: {e.Message}");
    return 2;
}

try
{
    await using var app = DaemonHost.Build(options);
    await app.RunAsync();
    return Environment.ExitCode;
}
catch (OptionsException e)
{
    Console.Error.WriteLine($"merlin: {e.Message}");
    return 2;
}
catch (IOException e) when (DaemonHost.DescribeBindFailure(options, e) is { } failure)
{
    Console.Error.WriteLine($"merlin: {failure}");
    return 2;
}
catch (Exception e)
{
    // Not a failure merlin knows how to name: a bug or an environment it does not expect. The whole exception, to report it.
    Console.Error.WriteLine($"merlin: failed: {e}");
    return 1;
}
