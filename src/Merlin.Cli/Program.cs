using Merlin.Cli;

return await MeradmApp.RunAsync(args, Console.Out, Console.Error);
