using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Merlin.Agent.Tests;

/// <summary>The agent's settings as IOptions sections: a test's (or the command line's) AgentOptions is given whole,
/// and a rule it breaks stops the agent at start with the message the command line gives for it.</summary>
public sealed class AgentSectionsTests
{
    private static AgentOptions Valid => new() { Services = ["web"], Addresses = [IPAddress.Parse("198.18.0.51"), IPAddress.Parse("2001:db8::51")] };

    private static ServiceProvider Sections(AgentOptions agent, SecondChanceOptions? secondChance = null) =>
        new ServiceCollection().AddAgentSections(agent, secondChance).BuildServiceProvider();

    [Fact]
    public void AValidSection_IsTheGivenInstance()
    {
        var agent = Valid;
        var chance = new SecondChanceOptions(0x5eed1234);
        using var sections = Sections(agent, chance);
        AgentSections.ValidateOnStart(sections);
        Assert.Same(agent, sections.GetRequiredService<IOptions<AgentOptions>>().Value);
        Assert.Same(chance, sections.GetRequiredService<IOptions<SecondChanceOptions>>().Value);
    }

    public static TheoryData<string, string> Broken => new()
    {
        { "loopback", "--address: 127.0.0.1 is not an address the load balancers can reach" },
        { "two-v4", "--address: give one address per family; 198.18.0.52 is a second IPv4 one" },
        { "no-address", "--address: at least one is needed" },
        { "twice", "--service: a service is named twice" },
        { "no-service", "--service: at least one service is needed" },
        { "bad-id", "--service: " },
        { "drain", "--drain-period: -1s is less than 0s" },
        { "timeout", "--timeout: 10ms is less than 100ms" },
        { "metrics", "--metrics-address: \"127.0.0.1:0\" is not ip:port" },
    };

    [Theory]
    [MemberData(nameof(Broken))]
    public void ABrokenRule_FailsAtStart_NamingItsFlag(string broken, string message)
    {
        var agent = broken switch
        {
            "loopback" => Valid with { Addresses = [IPAddress.Loopback] },
            "two-v4" => Valid with { Addresses = [IPAddress.Parse("198.18.0.51"), IPAddress.Parse("198.18.0.52")] },
            "no-address" => Valid with { Addresses = [] },
            "twice" => Valid with { Services = ["web", "web"] },
            "no-service" => Valid with { Services = [] },
            "bad-id" => Valid with { Services = ["web server"] },
            "drain" => Valid with { DrainPeriod = TimeSpan.FromSeconds(-1) },
            "timeout" => Valid with { CallTimeout = TimeSpan.FromMilliseconds(10) },
            "metrics" => Valid with { MetricsAddress = new IPEndPoint(IPAddress.Loopback, 0) },
            _ => throw new ArgumentOutOfRangeException(nameof(broken)),
        };
        using var sections = Sections(agent);
        var e = Assert.Throws<OptionsValidationException>(() => AgentSections.ValidateOnStart(sections));
        Assert.StartsWith(message, e.Failures.First());
        Assert.StartsWith(message, AgentSections.Check(agent));
        Assert.Throws<OptionsValidationException>(() => sections.GetRequiredService<IOptions<AgentOptions>>().Value);
    }

    [Fact]
    public void ASecondChancePeriodUnder100ms_FailsAtStart()
    {
        using var sections = Sections(Valid, new SecondChanceOptions(1) { Period = TimeSpan.FromMilliseconds(10) });
        var e = Assert.Throws<OptionsValidationException>(() => AgentSections.ValidateOnStart(sections));
        Assert.Equal("second chance: a period of 10ms is less than 100ms", e.Failures.Single());
    }
}
