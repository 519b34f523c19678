using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Merlin.Hosting;

/// <summary>
/// Option sections a host program builds itself (parsed from its flags) rather than binds from configuration: each is
/// registered as <see cref="IOptions{T}"/> with <c>ValidateOnStart</c>, and its <see cref="IValidateOptions{T}"/> rules
/// run on that very instance.
/// </summary>
public static class GivenSections
{
    /// <summary>Registers <paramref name="section"/> as the one value of <see cref="IOptions{T}"/>, validated at start.</summary>
    public static IServiceCollection AddGivenSection<T>(this IServiceCollection services, T section) where T : class
    {
        ArgumentNullException.ThrowIfNull(section);
        services.AddOptions<T>().ValidateOnStart();
        services.AddSingleton<IOptionsFactory<T>>(sp => new GivenOptionsFactory<T>(section, sp.GetServices<IValidateOptions<T>>()));
        return services;
    }

    /// <summary>IOptions' factory for a given section: the same instance, or every validator's failures.</summary>
    private sealed class GivenOptionsFactory<T>(T section, IEnumerable<IValidateOptions<T>> validators) : IOptionsFactory<T> where T : class
    {
        public T Create(string name)
        {
            var failures = validators.Select(v => v.Validate(name, section)).Where(r => r.Failed).SelectMany(r => r.Failures!).ToList();
            return failures.Count == 0 ? section : throw new OptionsValidationException(name, typeof(T), failures);
        }
    }
}
