using Merlin.Daemon;

// Exit codes (docs/operations.md, "Start-up order and exit codes"): 0 stopped; 2 a flag, a file it names or a port it names cannot be
// used — one line on stderr naming the flag, and nothing done to the kernel or the store; 1 anything else.
DaemonOptions options;
try
{
    // --help and --version are System.CommandLine's own: the help lists every flag with its default and meaning.
    if (new DaemonCommandLine().IsHelpOrVersion(args, out var request)) return request.Invoke();
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
