using Merlin.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Merlin.Daemon.Tests;

/// <summary>Merlin.Hosting's given sections, as merlin and merlin-agent register theirs.</summary>
public sealed class GivenSectionsTests
{
    private sealed record Section(int Port);

    private sealed class PortRule : IValidateOptions<Section>
    {
        public ValidateOptionsResult Validate(string? name, Section s) =>
            s.Port is > 0 and < 65536 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail($"--port: {s.Port} is not a port");
    }

    private static ServiceProvider Build(Section section) =>
        new ServiceCollection().AddGivenSection(section).AddSingleton<IValidateOptions<Section>, PortRule>().BuildServiceProvider();

    [Fact]
    public void AValidSection_IsTheVeryInstanceGiven()
    {
        var given = new Section(4282);
        using var services = Build(given);
        services.GetRequiredService<IStartupValidator>().Validate();
        Assert.Same(given, services.GetRequiredService<IOptions<Section>>().Value);
    }

    [Fact]
    public void AnInvalidSection_FailsAtStart_WithItsRulesMessage()
    {
        using var services = Build(new Section(0));
        var e = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());
        Assert.Equal("--port: 0 is not a port", Assert.Single(e.Failures));
    }
}
