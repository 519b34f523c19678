using System.Threading.Channels;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Backoff = Merlin.Model.Backoff;
using Wire = Merlin.Contracts;

namespace Merlin.Api;

/// <summary>
/// Removes a draining server from the store once its deadline has passed. Part of the API because the API
/// is the store's only writer; every daemon runs one, so a drain ends even when the node that started it is
/// gone. It knows every deadline in the store (a list at start, then the store's watch), sleeps on the
/// injected <see cref="TimeProvider"/> until the next one, then re-reads the server and deletes it only at
/// the version it read (<see cref="IStore.DeleteServerAsync(string, string, uint, long, CancellationToken)"/>):
/// of several daemons that wake for the same deadline exactly one deletes, an undrain or a new deadline
/// written in between wins, and a daemon that was down at the deadline removes the server when it starts.
/// </summary>
public sealed partial class DrainExpiry(IStore store, TimeProvider time, ILogger<DrainExpiry> logger) : BackgroundService
{
    private static readonly TimeSpan MinBackoff = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);

    private readonly Dictionary<ServerRef, DateTimeOffset> _deadlines = [];

    /// <summary>Servers this daemon removed (tests and logs; another daemon may have removed others).</summary>
    public long Removed { get; private set; }

    /// <summary>Deadlines known now: servers draining in the store.</summary>
    public int Draining => _deadlines.Count;

    /// <summary>Completes when the first scan of the store is done (overdue servers already removed).</summary>
    public Task Started => _started.Task;

    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private readonly record struct ServerRef(string ServiceId, string Ip, uint Port)
    {
        public override string ToString() => $"{(Ip.Contains(':') ? $"[{Ip}]" : Ip)}:{Port} of service {ServiceId}";
    }

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        var backoff = new Backoff(MinBackoff, MaxBackoff);
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await RunSessionAsync(backoff.Reset, ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Never fatal (a failed background service would stop the daemon): back off and list again.
                var delay = backoff.Next();
                LogFailed(e is StoreUnavailableException ? e.Message : e.ToString(), delay.TotalSeconds);
                await Task.Delay(delay, time, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>List, then follow the watch until it ends (compaction: a fresh list; an error: the caller backs off).</summary>
    private async Task RunSessionAsync(Action listed, CancellationToken ct)
    {
        var snapshot = await store.ListAsync(ct).ConfigureAwait(false);
        _deadlines.Clear();
        foreach (var item in snapshot.Items)
            foreach (var stored in item.Servers)
            {
                var server = StoredRecords.Message(stored);
                Track(new ServerRef(server.ServiceID, server.Key?.Ip ?? "", server.Key?.Port ?? 0), server);
            }
        listed();

        var changes = Channel.CreateUnbounded<StoreChange>(new UnboundedChannelOptions { SingleWriter = true });
        using var session = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var watch = PumpAsync(snapshot.Revision, changes.Writer, session.Token);
        try
        {
            while (true)
            {
                await ExpireDueAsync(ct).ConfigureAwait(false);
                _started.TrySetResult();

                while (changes.Reader.TryRead(out var change))
                {
                    if (change.Kind == StoreChangeKind.Resync) return; // history gone: list again
                    if (ParseServerKey(change.Key) is not { } server) continue;
                    if (change.Kind == StoreChangeKind.Delete) _deadlines.Remove(server);
                    else await RefreshAsync(server, ct).ConfigureAwait(false);
                }
                if (changes.Reader.Completion.IsCompleted)
                {
                    await changes.Reader.Completion.ConfigureAwait(false); // rethrows the watch's failure
                    return;
                }

                // Sleep until the next deadline or the next change, whichever comes first.
                TimeSpan? next = null;
                if (_deadlines.Count > 0)
                {
                    next = _deadlines.Values.Min() - time.GetUtcNow();
                    if (next <= TimeSpan.Zero) continue;
                }
                using var wake = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var waits = new List<Task> { changes.Reader.WaitToReadAsync(wake.Token).AsTask() };
                if (next is { } delay) waits.Add(Task.Delay(delay, time, wake.Token));
                await Task.WhenAny(waits).ConfigureAwait(false);
                await wake.CancelAsync().ConfigureAwait(false);
                ct.ThrowIfCancellationRequested();
            }
        }
        finally
        {
            await session.CancelAsync().ConfigureAwait(false);
            try { await watch.ConfigureAwait(false); } catch { /* ended with the session */ }
        }
    }

    private async Task PumpAsync(long revision, ChannelWriter<StoreChange> writer, CancellationToken ct)
    {
        Exception? failure = null;
        try
        {
            await foreach (var change in store.WatchAsync(revision, ct).ConfigureAwait(false))
            {
                writer.TryWrite(change);
                if (change.Kind == StoreChangeKind.Resync) break;
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
        catch (Exception e) { failure = e; }
        writer.TryComplete(failure);
    }

    /// <summary>Removes every server whose deadline has passed, each only at the version whose deadline it read.</summary>
    private async Task ExpireDueAsync(CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var due = _deadlines.Where(d => d.Value <= now).Select(d => d.Key).ToList();
        foreach (var server in due)
        {
            var current = await store.GetServerAsync(server.ServiceId, server.Ip, server.Port, ct).ConfigureAwait(false);
            if (current is null) { _deadlines.Remove(server); continue; } // another node removed it, or someone deleted it
            if (StoredRecords.Message(current.Value).DrainDeadline is not { } deadline || deadline.ToDateTimeOffset() > time.GetUtcNow())
            {
                Track(server, StoredRecords.Message(current.Value)); // undrained, or drained again with a later deadline
                continue;
            }
            try
            {
                await store.DeleteServerAsync(server.ServiceId, server.Ip, server.Port, current.Version, ct).ConfigureAwait(false);
                _deadlines.Remove(server);
                Removed++;
                LogRemoved(server.ToString(), deadline.ToDateTimeOffset());
            }
            catch (NotFoundException)
            {
                _deadlines.Remove(server); // another node got there first
            }
            catch (ConflictException)
            {
                // Changed since the read (an undrain, a new deadline, another node's delete in flight): the
                // next round re-reads it, since its known deadline is still due.
            }
        }
    }

    private async Task RefreshAsync(ServerRef server, CancellationToken ct)
    {
        var current = await store.GetServerAsync(server.ServiceId, server.Ip, server.Port, ct).ConfigureAwait(false);
        if (current is null) _deadlines.Remove(server);
        else Track(server, StoredRecords.Message(current.Value));
    }

    private void Track(ServerRef server, Wire.RealServer record)
    {
        DateTimeOffset? deadline = null;
        try { deadline = record.DrainDeadline?.ToDateTimeOffset(); }
        catch (InvalidOperationException) { } // the API never writes one; a record from elsewhere is not ours to remove
        if (deadline is { } d && server.Ip.Length != 0) _deadlines[server] = d;
        else _deadlines.Remove(server);
    }

    /// <summary><c>servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c> (IPv6 unbracketed) → the server; null for other keys.</summary>
    private static ServerRef? ParseServerKey(string key)
    {
        const string Prefix = "servers/";
        if (!key.StartsWith(Prefix, StringComparison.Ordinal)) return null;
        var rest = key.AsSpan(Prefix.Length);
        var slash = rest.IndexOf('/');
        if (slash <= 0) return null;
        var endpoint = rest[(slash + 1)..];
        var colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !uint.TryParse(endpoint[(colon + 1)..], out var port)) return null;
        return new ServerRef(rest[..slash].ToString(), endpoint[..colon].ToString(), port);
    }

    [LoggerMessage(EventId = 232, Level = LogLevel.Information, Message = "Drain of server {Server} ended at {Deadline:O}: removed it from the store")]
    private partial void LogRemoved(string server, DateTimeOffset deadline);

    [LoggerMessage(EventId = 233, Level = LogLevel.Warning, Message = "Drain expiry paused: {Reason}; retrying in {Seconds:0.#}s")]
    private partial void LogFailed(string reason, double seconds);
}
