namespace Merlin.Lab.Server;

public static class Program
{
    public const string Usage = """
        Merlin lab server — run inside a lab network namespace (never in the root namespace).

          serve --name NAME [--http 80] [--echo 9000] [--udp 9001] [--bind ADDR] [--lifetime 30m]
                [--echo-idle 5m] [--health-file PATH] [--exit-on-stdin-eof] [--verbose]
              HTTP (GET / → NAME, GET /healthz → 200, or 503 while PATH exists), TCP and UDP echo
              ("NAME <what you sent>"). Port 0 turns a server off. Prints READY when listening.

          client http --target ADDR:PORT [--count 100] [--timeout 2s] [--duration 2m] [--interval 0ms]
                [--concurrency 1] [--path /] [--host H] [--source-ports A-B] [--flows]
          client udp  --target ADDR:PORT [--count 100] [--timeout 2s] [--duration 2m] [--interval 0ms]
                [--concurrency 1] [--source-ports A-B] [--flows]
              One new connection (flow) per request; prints a JSON report: successes, failures and
              per-server counts. --source-ports replays the same flows in a later run.

          client hold --target ADDR:PORT [--connections 20] [--interval 200ms] [--duration 10s]
                [--timeout 2s] [--only NAME] [--max-attempts N]
              Long-lived echo connections; prints "connected N" on stderr once open, then a JSON report
              of which server each reached and whether it answered every exchange.


        Every loop ends by itself (count, duration, lifetime); SIGTERM/SIGINT end it early with a report.
        """;

    public static async Task<int> Main(string[] argv)
    {
        try
        {
            var a = Args.Parse(argv);
            var words = string.Join(' ', a.Words);
            return words switch
            {
                "serve" => await Serve.RunAsync(a),
                "client http" => await RequestClient.RunAsync("http", a),
                "client udp" => await RequestClient.RunAsync("udp", a),
                "client hold" => await HoldClient.RunAsync(a),
                "" or "help" => Help(0),
                _ => throw new UsageException($"unknown command '{words}'"),
            };
        }
        catch (UsageException e)
        {
            await Console.Error.WriteLineAsync($"merlin-lab-server: {e.Message}\n\n{Usage}");
            return 2;
        }
    }

    private static int Help(int code)
    {
        Console.Out.WriteLine(Usage);
        return code;
    }
}
