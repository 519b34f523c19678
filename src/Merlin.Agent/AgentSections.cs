using System.Net;
using System.Net.Sockets;
using Merlin.Model;
using Merlin.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Merlin.Agent;

// The agent's settings as IOptions<T> sections, as the daemon's are (Merlin.Daemon's DaemonSections): each section's
// rules in an IValidateOptions<T>, with the messages they always had (each names its flag). Turning text into values
// (an address, a duration, a seed) stays with the parsing in AgentCommandLine.

/// <summary>What the node registers: services, its own addresses, the drain, the API call deadline, metrics.</summary>
internal sealed class AgentOptionsValidator : IValidateOptions<AgentOptions>
{
    public static readonly TimeSpan MinCallTimeout = TimeSpan.FromMilliseconds(100);

    public ValidateOptionsResult Validate(string? name, AgentOptions o)
    {
        if (o.Services.Count == 0) return Fail("--service: at least one service is needed");
        foreach (var id in o.Services)
            if (Validation.Id(id, "--service") is { } idError) return Fail($"{idError} ({Validation.Quote(id)})");
        if (o.Services.Distinct(StringComparer.Ordinal).Count() != o.Services.Count) return Fail("--service: a service is named twice");

        if (o.Addresses.Count == 0) return Fail("--address: at least one is needed (this node's own; its real-server IP)");
        var seen = new List<IPAddress>();
        foreach (var a in o.Addresses)
        {
            if (IPAddress.IsLoopback(a) || a.Equals(IPAddress.Any) || a.Equals(IPAddress.IPv6Any))
                return Fail($"--address: {a} is not an address the load balancers can reach");
            if (seen.Any(x => x.AddressFamily == a.AddressFamily))
                return Fail($"--address: give one address per family; {a} is a second {(a.AddressFamily == AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")} one");
            seen.Add(a);
        }

        if (o.DrainPeriod < TimeSpan.Zero) return Fail($"--drain-period: {Durations.Format(o.DrainPeriod)} is less than 0s");
        if (o.CallTimeout < MinCallTimeout) return Fail($"--timeout: {Durations.Format(o.CallTimeout)} is less than {Durations.Format(MinCallTimeout)}");
        if (o.MetricsAddress is { Port: 0 } metrics) return Fail($"--metrics-address: {Validation.Quote(metrics.ToString())} is not ip:port (e.g. 127.0.0.1:9477)");
        return ValidateOptionsResult.Success;
    }

    private static ValidateOptionsResult Fail(string message) => ValidateOptionsResult.Fail(message);
}

/// <summary>Second chance re-reads the stored tables every period: often enough to follow a move, not a busy loop.</summary>
internal sealed class SecondChanceOptionsValidator : IValidateOptions<SecondChanceOptions>
{
    public static readonly TimeSpan MinPeriod = TimeSpan.FromMilliseconds(100);

    public ValidateOptionsResult Validate(string? name, SecondChanceOptions o) =>
        o.Period < MinPeriod
            ? ValidateOptionsResult.Fail($"second chance: a period of {Durations.Format(o.Period)} is less than {Durations.Format(MinPeriod)}")
            : ValidateOptionsResult.Success;
}

/// <summary>
/// The sections as IOptions: each given whole (parsed from the flags, or built by a test), checked by its validators
/// when first read and, through ValidateOnStart, before the agent touches the node or the API.
/// </summary>
public static class AgentSections
{
    public static IServiceCollection AddAgentSections(this IServiceCollection services, AgentOptions agent, SecondChanceOptions? secondChance)
    {
        services.AddGivenSection(agent).AddSingleton<IValidateOptions<AgentOptions>, AgentOptionsValidator>();
        if (secondChance is not null)
            services.AddGivenSection(secondChance).AddSingleton<IValidateOptions<SecondChanceOptions>, SecondChanceOptionsValidator>();
        return services;
    }

    /// <summary>The first rule <paramref name="agent"/> breaks, as its message (naming the flag); null when none.</summary>
    public static string? Check(AgentOptions agent) =>
        new AgentOptionsValidator().Validate(null, agent) is { Failed: true } result ? result.Failures!.First() : null;

    /// <summary>
    /// Runs every section's validators (ValidateOnStart's check, which a generic host would run at start): the
    /// agent has no host, so its Program calls this before anything is touched.
    /// </summary>
    /// <exception cref="OptionsValidationException">A section breaks a rule; its first failure names the flag.</exception>
    public static void ValidateOnStart(IServiceProvider services) => services.GetRequiredService<IStartupValidator>().Validate();
}
