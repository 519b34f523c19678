using System.Diagnostics;
using System.Net;
using Merlin.Announcer;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;

namespace Merlin.Daemon;

/// <summary>
/// Runs the announcer with the daemon and tells it, after every pass, on a node drain and every second
/// while a store grace runs, the VIPs <see cref="AnnouncePolicy"/> picks. Stops the announcer first on
/// shutdown (registered after the reconcile loop), so routes are withdrawn while the dataplane still forwards.
/// </summary>
internal sealed partial class AnnouncerService(IAnnouncer announcer, ReconcileLoop loop, ReconcilerStatus status, NodeDrain drain, DaemonOptions options,
    IDataplane dataplane, TimeProvider time, ILogger<AnnouncerService> log) : IHostedService
{
    /// <summary>How long the start waits for the first pass, so the engine starts with the service VIPs rather than changing at once.</summary>
    private static readonly TimeSpan FirstPassWait = TimeSpan.FromSeconds(10);

    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _lock = new();
    private Task _starting = Task.CompletedTask;
    private readonly AnnouncePolicy _policy = new(options.StoreGrace, time);
    private string? _withheld;
    private ITimer? _graceTimer;

    /// <summary>Why no VIP is announced now (the node is drained, the store is lost), or null.</summary>
    public string? Withheld { get { lock (_lock) return _withheld; } }

    public Task StartAsync(CancellationToken ct)
    {
        if (status.Current is { Ready: true, Desired: { } desired }) _policy.OnPass(true, true, desired.Addresses); // a pass that finished before we listened
        loop.PassCompleted += OnPass;
        announcer.Changed += OnChanged;
        if (options.StoreGrace is { } grace) _graceTimer = time.CreateTimer(_ => Feed(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
        var token = _stopping.Token;
        _starting = Task.Run(async () =>
        {
            try
            {
                var clock = Stopwatch.StartNew();
                // VRRP: keepalived starts only once a pass has programmed everything, so a node whose table is not
                // complete never wins an election (its peer holds the VIPs, or nobody while neither can forward).
                // An adopting daemon waits too; the keepalived it adopts keeps running meanwhile.
                var vrrp = announcer.Mode == Merlin.Announcer.Vrrp.KeepalivedAnnouncer.Name;
                while (vrrp ? !status.Current.Ready : status.Current.Desired is null && clock.Elapsed < FirstPassWait) await Task.Delay(50, token);
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
        if (_graceTimer is not null) await _graceTimer.DisposeAsync();
        await _stopping.CancelAsync();
        await _starting;
        await announcer.StopAsync(ct);
        announcer.Changed -= OnChanged;
        _stopping.Dispose();
    }

    private void OnPass(PassResult result)
    {
        var desired = status.Current.Desired;
        var unresolved = dataplane is IUnresolvedServers { UnresolvedServers.Count: > 0 };
        lock (_lock) _policy.OnPass(result.StoreReachable, result.Converged, desired?.Addresses, unresolved);
        Feed();
    }

    /// <summary>Tells the announcer the VIPs it should announce now (idempotent: it ignores a repeated set).</summary>
    public void Feed()
    {
        IReadOnlyCollection<IPAddress> vips;
        string? was, why;
        lock (_lock)
        {
            was = _withheld;
            (vips, why) = _policy.Decide(drain.Drained);
            _withheld = why;
        }
        // Once per change of reason (the store-loss sentence counts seconds).
        if (Kind(why) != Kind(was))
        {
            if (why is null) LogAnnouncing(log, vips.Count);
            else LogWithholding(log, why);
        }
        _ = announcer.DrainAsync(drain.Drained, CancellationToken.None);
        _ = announcer.AnnounceAsync(vips, CancellationToken.None);
    }

    private static string? Kind(string? why) => why?[..why.IndexOf(' ', 4)];

    private void OnChanged(AnnouncerState s) => LogState(log, s.Mode, s.RoleName, s.Healthy, s.Detail);

    [LoggerMessage(EventId = 9101, Level = LogLevel.Information, Message = "Announcer {Mode} started")]
    private static partial void LogStarted(ILogger logger, string mode);

    [LoggerMessage(EventId = 9102, Level = LogLevel.Error, Message = "The announcer failed to start")]
    private static partial void LogStartFailed(ILogger logger, Exception e);

    [LoggerMessage(EventId = 9103, Level = LogLevel.Debug, Message = "Announcer {Mode} {State} (healthy: {Healthy}): {Detail}")]
    private static partial void LogState(ILogger logger, string mode, string state, bool healthy, string detail);

    [LoggerMessage(EventId = 9104, Level = LogLevel.Warning, Message = "Withdrawing every VIP: {Why}")]
    private static partial void LogWithholding(ILogger logger, string why);

    [LoggerMessage(EventId = 9105, Level = LogLevel.Information, Message = "Announcing the VIPs again ({Count})")]
    private static partial void LogAnnouncing(ILogger logger, int count);
}
