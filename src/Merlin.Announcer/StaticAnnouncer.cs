using System.Net;

namespace Merlin.Announcer;

/// <summary>The operator places the VIPs (by hand, a script, another cluster manager): nothing to do, always healthy.</summary>
public sealed class StaticAnnouncer : IAnnouncer
{
    public const string Name = "static";

    private static readonly AnnouncerState Fixed =
        new(Name, AnnouncerRole.None, [], Healthy: true, "the operator places the VIPs (--announcer static)", null);

    public string Mode => Name;

    public AnnouncerState State => Fixed;

    public event Action<AnnouncerState>? Changed { add { } remove { } }

    public Task StartAsync(CancellationToken ct) => Task.CompletedTask;

    public Task AnnounceAsync(IReadOnlyCollection<IPAddress> vips, CancellationToken ct) => Task.CompletedTask;

    public Task StopAsync(CancellationToken ct) => Task.CompletedTask;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
