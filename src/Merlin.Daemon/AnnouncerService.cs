using System.Diagnostics;
using System.Net;
using Merlin.Announcer;
using Merlin.Reconciler;

namespace Merlin.Daemon;

/// <summary>
/// Runs the announcer with the daemon and tells it, after every reconcile pass, the VIPs of every service
/// in the desired state (the whole set: a pass that could not reach the store keeps the last one, so
/// losing etcd never drops the VIPs). Stops it first on shutdown (registered after the reconcile loop).
/// </summary>
internal sealed partial class AnnouncerService(IAnnouncer announcer, ReconcileLoop loop, ReconcilerStatus status, ILogger<AnnouncerService> log) : IHostedService
{
    /// <summary>How long the start waits for the first pass, so keepalived starts with the service VIPs rather than reloading at once.</summary>
    private static readonly TimeSpan FirstPassWait = TimeSpan.FromSeconds(10);

    private readonly CancellationTokenSource _stopping = new();
    private Task _starting = Task.CompletedTask;

    public Task StartAsync(CancellationToken ct)
    {
        loop.PassCompleted += OnPass;
        announcer.Changed += OnChanged;
        var token = _stopping.Token;
        _starting = Task.Run(async () =>
        {
            try
            {
                var clock = Stopwatch.StartNew();
                while (status.Current.Desired is null && clock.Elapsed < FirstPassWait) await Task.Delay(50, token);
                Feed();
                await announcer.StartAsync(token);
                LogStarted(log, announcer.Mode);
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested) { }
            catch (Exception e) { LogStartFailed(log, e); }   // the status shows the announcer unhealthy; /readyz is 503
        }, CancellationToken.None);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken ct)
    {
        loop.PassCompleted -= OnPass;
        await _stopping.CancelAsync();
        await _starting;
        await announcer.StopAsync(ct);
        announcer.Changed -= OnChanged;
        _stopping.Dispose();
    }

    private void OnPass(PassResult _) => Feed();

    private void Feed()
    {
        if (status.Current.Desired is { } desired) _ = announcer.AnnounceAsync(VipsOf(desired), CancellationToken.None);
    }

    private void OnChanged(AnnouncerState s) => LogState(log, s.Mode, s.RoleName, s.Healthy, s.Detail);

    /// <summary>The VIPs of every address service (a fwmark service has none of its own).</summary>
    public static IReadOnlyCollection<IPAddress> VipsOf(DataplaneState desired) =>
        desired.Services.Keys.Where(k => !k.IsFirewallMark && k.Address is not null).Select(k => k.Address!).Distinct().ToList();

    [LoggerMessage(EventId = 9101, Level = LogLevel.Information, Message = "Announcer {Mode} started")]
    private static partial void LogStarted(ILogger logger, string mode);

    [LoggerMessage(EventId = 9102, Level = LogLevel.Error, Message = "The announcer failed to start")]
    private static partial void LogStartFailed(ILogger logger, Exception e);

    [LoggerMessage(EventId = 9103, Level = LogLevel.Debug, Message = "Announcer {Mode} {State} (healthy: {Healthy}): {Detail}")]
    private static partial void LogState(ILogger logger, string mode, string state, bool healthy, string detail);
}
