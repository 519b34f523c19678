using Merlin.Contracts;

namespace Merlin.Agent.Tests;

/// <summary>merlin-agent's options: what they become, and each mistake named by its option.</summary>
public sealed class AgentCommandLineTests
{
    private static readonly string[] Required = ["--api", "lb.example:4282", "--service", "web", "--address", "198.18.0.51"];

    private static (AgentInvocation? Invocation, string? Error) Bind(params string[] args)
    {
        var line = new AgentCommandLine();
        var parsed = line.Root.Parse([.. Required, .. args]);
        Assert.Empty(parsed.Errors);
        var invocation = line.Bind(parsed, out var error);
        return (invocation, error);
    }

    [Fact]
    public void Defaults_AreDirectServerReturn_Weight1_NoHealthCheck_And30sDrain()
    {
        var (i, error) = Bind();
        Assert.Null(error);
        Assert.Equal(("lb.example", (ushort)4282), (i!.Connection.Host, i.Connection.Port));
        Assert.Null(i.Connection.Tls);
        Assert.Equal(["web"], i.Agent.Services);
        Assert.Equal((1u, ForwardMethod.Route, TimeSpan.FromSeconds(30)), (i.Agent.Weight, i.Agent.Forward, i.Agent.DrainPeriod));
        Assert.Null(i.Agent.HealthCheck);
        Assert.Equal("/var/lib/merlin-agent/node.json", i.StateFile);
    }

    [Fact]
    public void AHealthCheck_TakesTheGivenTiming()
    {
        var (i, _) = Bind("--health-endpoint", "http://:8081/health", "--health-period", "500ms", "--health-down", "3", "--address", "2001:db8::51");
        var health = i!.Agent.HealthCheck!;
        Assert.Equal(("http://:8081/health", TimeSpan.FromMilliseconds(500), TimeSpan.FromMilliseconds(500), 2u, 3u), // the timeout: 1 s, or the period if shorter
            (health.Endpoint, health.Period.ToTimeSpan(), health.Timeout.ToTimeSpan(), health.UpThreshold, health.DownThreshold));
        Assert.Equal(2, i.Agent.Addresses.Count);
    }

    [Theory]
    [InlineData("[2001:db8::10]:4000", "2001:db8::10", 4000)]
    [InlineData("2001:db8::10", "2001:db8::10", 4282)]
    [InlineData("198.18.0.10", "198.18.0.10", 4282)]
    [InlineData("lb:1", "lb", 1)]
    public void TheApiAddress_TakesAHostAndAnOptionalPort(string text, string host, int port) =>
        Assert.Equal((host, (ushort)port), AgentCommandLine.ParseHost(text));

    [Theory]
    [InlineData("--address", "198.18.0.52", "--address: give one address per family")]
    [InlineData("--address", "198.18.0.0/24", "--address: \"198.18.0.0/24\" is not an IP address")]
    [InlineData("--address", "127.0.0.1", "--address: 127.0.0.1 is not an address the load balancers can reach")]
    [InlineData("--forward", "masq", "--forward: \"masq\" is not route or tunnel")]
    [InlineData("--weight", "-1", "--weight: \"-1\" is not a whole number")]
    [InlineData("--drain-period", "soon", "--drain-period: ")]
    [InlineData("--health-period", "1s", "--health-endpoint: required with --health-period")]
    [InlineData("--service", "web", "--service: a service is named twice")]
    [InlineData("--key", "agent.key", "--key: needs --cert")]
    [InlineData("--token-file", "token", "--token-file: a token is sent only over TLS or to loopback")]
    [InlineData("--log-format", "xml", "--log-format: \"xml\" is not text or json")]
    [InlineData("--timeout", "1ms", "--timeout: 1ms is less than 100ms")]
    public void Mistakes_AreNamedByTheirOption(string option, string value, string message)
    {
        var (i, error) = Bind(option, value);
        Assert.Null(i);
        Assert.StartsWith(message, error);
    }

    [Theory]
    [InlineData("ftp://:21/", "--health-endpoint: scheme \"ftp\" is not one of http, https, tcp, grpc")]
    [InlineData("http://node:80/healthz", "--health-endpoint: \"http://node:80/healthz\" must not name a host")]
    public void ABadHealthEndpoint_IsNamedBeforeTheApiSeesIt(string endpoint, string message)
    {
        var (i, error) = Bind("--health-endpoint", endpoint);
        Assert.Null(i);
        Assert.StartsWith(message, error);
    }

    [Theory]
    [InlineData("--health-period", "2h", "--health-period: 2h is more than 1h")]
    [InlineData("--health-period", "50ms", "--health-period: 50ms is less than 100ms")]
    [InlineData("--health-timeout", "5s", "--health-timeout: 5s is longer than --health-period 2s")]
    public void AHealthTimingOutsideTheApisBounds_IsNamedByItsOption(string option, string value, string message)
    {
        var (i, error) = Bind("--health-endpoint", "http://:8081/health", option, value);
        Assert.Null(i);
        Assert.StartsWith(message, error);
    }

    [Theory]
    [InlineData("[2001:db8::10]:4300", "2001:db8::10", 4300)]
    [InlineData("lb.example.net", "lb.example.net", 4282)]
    public void TheApi_IsHostPort_ParsedAsMeradmParsesHost(string api, string host, int port)
    {
        var line = new AgentCommandLine();
        var i = line.Bind(line.Root.Parse(["--api", api, "--service", "web", "--address", "198.18.0.51"]), out var error);
        Assert.True(i is not null, error);
        Assert.Equal((host, port), (i.Connection.Host, (int)i.Connection.Port));
    }

    [Theory]
    [InlineData("unix:///run/merlin/merlin.sock")]
    [InlineData("https://lb:4282")]
    public void TheApi_IsNotAUrlOrASocket(string api)
    {
        var line = new AgentCommandLine();
        Assert.Null(line.Bind(line.Root.Parse(["--api", api, "--service", "web", "--address", "198.18.0.51"]), out var error));
        Assert.Equal($"--api: \"{api}\" is not host[:port]", error);
    }

    [Fact]
    public void ABadApiPort_IsNamed()
    {
        var line = new AgentCommandLine();
        var parsed = line.Root.Parse(["--api", "lb:99999", "--service", "web", "--address", "198.18.0.51"]);
        Assert.Null(line.Bind(parsed, out var error));
        Assert.StartsWith("--api: \"99999\" is not a port", error);
    }

    [Fact]
    public void Help_ListsEveryFlag_WithItsMeaning_AndItsDefaultOrRequired()
    {
        var line = new AgentCommandLine();
        var output = new StringWriter();
        Assert.Equal(0, line.Root.Parse(["--help"]).Invoke(new System.CommandLine.InvocationConfiguration { Output = output }));
        var help = string.Join(" ", output.ToString().Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries)); // as if never wrapped

        var flags = line.Root.Options.Where(o => o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name is not ("--help" or "--version")).ToList();
        Assert.Equal(20, flags.Count);
        foreach (var flag in flags)
        {
            Assert.Contains(flag.Name + " ", help);
            Assert.True(flag.Required || flag.Description!.Contains("[default", StringComparison.Ordinal), $"{flag.Name}: no default in \"{flag.Description}\"");
        }
        // The defaults shown are AgentOptions' own.
        Assert.Contains("--weight <n> Weight of this node in each service [default: 1]", help);
        Assert.Contains("route (direct server return) or tunnel [default: route]", help);
        Assert.Contains("(0s: remove at once) [default: 30s]", help);
        Assert.Contains("Deadline of each API call, at least 100ms [default: 10s]", help);
    }

    [Fact]
    public void TheRequiredOptions_AreRequired()
    {
        var parsed = new AgentCommandLine().Root.Parse(["--api", "lb"]);
        Assert.Contains(parsed.Errors, e => e.Message.Contains("--service", StringComparison.Ordinal));
        Assert.Contains(parsed.Errors, e => e.Message.Contains("--address", StringComparison.Ordinal));
    }
}
