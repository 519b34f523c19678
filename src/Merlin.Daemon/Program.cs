using Merlin.Daemon;

DaemonOptions options;
try
{
    if (args.Contains("--help") || args.Contains("-h"))
    {
        Console.WriteLine("merlin: the Merlin load-balancer daemon\n\nFlags (also MERLIN_<FLAG> environment variables, or a JSON --config file):");
        foreach (var flag in DaemonOptions.Flags.Keys) Console.WriteLine($"  {flag}");
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
    return 0;
}
catch (OptionsException e)
{
    Console.Error.WriteLine($"merlin: {e.Message}");
    return 2;
}
catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException or null)
{
    Console.Error.WriteLine($"merlin: cannot listen: {e.Message}");
    return 1;
}
