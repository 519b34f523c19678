using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Merlin.Linux;

namespace Merlin.Announcer.Bgp;

/// <summary>
/// BGP for ECMP through gobgpd: runs it as a supervised child (restarted with backoff when it dies or stops
/// answering), sets up the instance and its peers over the gRPC API, and keeps gobgpd's RIB equal to the
/// desired VIPs — a /32 (/128) per VIP, added and withdrawn one by one, so a change never disturbs the other
/// routes. Stopping withdraws every route and waits until the established peers were told before gobgpd goes.
/// </summary>
public sealed partial class GobgpAnnouncer : IAnnouncer
{
    public const string Name = "bgp";

    private static readonly TimeSpan SocketWait = TimeSpan.FromSeconds(10);
    /// <summary>How often the sessions are read: the state reported, and the cadence at which a lost route is replayed.</summary>
    private static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    private readonly BgpOptions _options;
    private readonly ILogger _log;
    private readonly ILogger _gobgpLog;
    private readonly TimeProvider _time;
    private readonly EngineSupervisor _engine;
    private readonly Lock _lock = new();
    private readonly Channel<bool> _wake = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    private IReadOnlyList<IPAddress> _desired = [];
    /// <summary>The set <see cref="AnnounceAsync"/> was last given, to pass over the same instance without normalising it.</summary>
    private IReadOnlyCollection<IPAddress>? _given;
    /// <summary>The routes in the running gobgpd's RIB (added by this process since gobgpd started).</summary>
    private readonly HashSet<IPAddress> _announced = [];
    private IReadOnlyList<BgpSession> _sessions = [];
    private bool _running;
    private bool _stopped;
    private string _problem = "not started";
    private DateTimeOffset? _since;
    private AnnouncerState _state;

    private CancellationTokenSource? _stop;
    private Task? _supervisor;
    private RunningProgram? _process;
    private GobgpClient? _client;
    private volatile bool _stopping;

    public GobgpAnnouncer(BgpOptions options, ILoggerFactory logs, TimeProvider? time = null)
    {
        if (options.Validate() is { } error) throw new ArgumentException($"{error.Flag}: {error.Reason}", nameof(options));
        _options = options;
        _log = logs.CreateLogger<GobgpAnnouncer>();
        _gobgpLog = logs.CreateLogger("Merlin.Announcer.Gobgpd");
        _time = time ?? TimeProvider.System;
        _engine = new EngineSupervisor(_time);
        _state = BuildState();
    }

    public string Mode => Name;

    public BgpOptions Options => _options;

    public AnnouncerState State { get { lock (_lock) return _state; } }

    /// <summary>The sessions as last read from gobgpd.</summary>
    public IReadOnlyList<BgpSession> Sessions { get { lock (_lock) return _sessions; } }

    /// <summary>The running gobgpd's PID, or null.</summary>
    public int? Pid { get { lock (_lock) return _process is { HasExited: false } p ? p.Pid : null; } }

    public event Action<AnnouncerState>? Changed;

    public Task AnnounceAsync(IReadOnlyCollection<IPAddress> vips, CancellationToken ct)
    {
        // Every reconcile pass announces; the daemon's VIP set is the same instance until a VIP comes or goes.
        lock (_lock) if (ReferenceEquals(vips, _given)) return Task.CompletedTask;
        var normalized = VipSet.Normalize(vips);
        lock (_lock)
        {
            _given = vips;
            if (normalized.SequenceEqual(_desired)) return Task.CompletedTask;
            _desired = normalized;
        }
        LogDesired(_log, normalized.Count, string.Join(" ", normalized));
        _wake.Writer.TryWrite(true);
        Publish();
        return Task.CompletedTask;
    }

    public async Task StartAsync(CancellationToken ct)
    {
        if (_supervisor is not null) throw new InvalidOperationException("already started");
        Directory.CreateDirectory(_options.StateDir);
        await StopStaleAsync(ct);
        _stop = new CancellationTokenSource();
        _supervisor = Task.Run(() => SuperviseAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>
    /// Returns once gobgpd's RIB holds the desired routes and every established peer has been sent exactly
    /// those of its family (a drain returns when the routers know), or when <paramref name="ct"/> ends.
    /// </summary>
    public async Task SettleAsync(CancellationToken ct)
    {
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            GobgpClient? client;
            IReadOnlyList<IPAddress> want;
            bool synced;
            lock (_lock)
            {
                client = _client;
                want = _desired.Where(HasPeerFor).ToList();
                synced = _running && _announced.SetEquals(want);
            }
            if (client is null) return; // nothing runs that could announce anything
            if (synced)
            {
                try
                {
                    var sessions = await client.ListPeersAsync(ct);
                    if (sessions.Where(s => s.Established).All(s => s.Advertised == (ulong)want.Count(v => v.AddressFamily == s.Address.AddressFamily)))
                        return;
                }
                catch (RpcException) when (!ct.IsCancellationRequested) { }
            }
            await Task.Delay(TimeSpan.FromMilliseconds(50), _time, ct);
        }
    }

    public async Task StopAsync(CancellationToken ct)
    {
        if (_stopping) return;
        _stopping = true;
        if (_stop is not null) await _stop.CancelAsync();
        if (_supervisor is not null)
        {
            try { await _supervisor; }
            catch (OperationCanceledException) { }
        }
        RunningProgram? p;
        GobgpClient? client;
        lock (_lock) (p, client) = (_process, _client);
        if (client is not null && p is { HasExited: false })
        {
            // Withdraw first, and let the routers hear it, while this node still forwards what reaches it.
            var clock = Stopwatch.StartNew();
            int count;
            lock (_lock) { count = _announced.Count; _desired = []; _given = null; }
            try
            {
                await client.DeleteAllPathsAsync(ct);
                lock (_lock) _announced.Clear();
                Publish();
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
                wait.CancelAfter(_options.WithdrawWait);
                await SettleAsync(wait.Token);
                LogWithdrawn(_log, count, clock.ElapsedMilliseconds);
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException)
            {
                LogWithdrawIncomplete(_log, count, clock.ElapsedMilliseconds, e.Message);
            }
        }
        client?.Dispose();
        if (p is not null) await TerminateAsync(p, ct);
        lock (_lock)
        {
            _running = false;
            _stopped = true;
            _client = null;
            _process = null;
            _sessions = [];
            SetProblem("gobgpd stopped; every route was withdrawn");
        }
        Publish();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None);
        _stop?.Dispose();
    }

    private Task SuperviseAsync(CancellationToken ct) => _engine.RunAsync(RunOnceAsync, OnEngineEnded, ct);

    /// <summary>Starts gobgpd and keeps its RIB equal to the desired VIPs until it exits or stops answering; throws when stopping (StopAsync withdraws and stops it).</summary>
    private async Task<EngineRun> RunOnceAsync(CancellationToken ct)
    {
        RunningProgram? process = null;
        GobgpClient? client = null;
        try
        {
            process = StartGobgpd();
            client = await ConnectAsync(process, ct);
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is IOException or System.ComponentModel.Win32Exception or RpcException or TimeoutException or UnauthorizedAccessException)
        {
            client?.Dispose();
            if (process is not null) await process.KillAsync();
            return EngineRun.FailedToStart(e.Message, processStarted: process is not null);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Stopping while it started: StopAsync ends what is there.
            lock (_lock) { _process = process; _client = client; }
            throw;
        }

        lock (_lock)
        {
            _process = process;
            _client = client;
            _running = true;
            _announced.Clear();
            SetProblem(null);
        }
        Publish();
        var started = _time.GetTimestamp();
        var exited = process.Exited;
        string why;
        try
        {
            while (true)
            {
                await SyncAsync(client, ct);
                await PollAsync(client, ct);
                var wake = _wake.Reader.WaitToReadAsync(ct).AsTask();
                var tick = Task.Delay(PollInterval, _time, ct);
                await Task.WhenAny(exited, wake, tick);
                ct.ThrowIfCancellationRequested();
                if (exited.IsCompleted) break;
                _wake.Reader.TryRead(out _);
            }
            why = $"gobgpd exited with code {process.ExitCode}";
        }
        catch (RpcException) when (ct.IsCancellationRequested)
        {
            throw new OperationCanceledException(ct); // StopAsync withdraws and stops gobgpd
        }
        catch (RpcException e)
        {
            // A gobgpd that no longer answers its API cannot be told anything: replace it.
            why = $"gobgpd stopped answering ({e.Status.StatusCode}: {e.Status.Detail})";
            await process.KillAsync();
        }

        await exited;
        var ran = _time.GetElapsedTime(started);
        lock (_lock)
        {
            _running = false;
            _process = null;
            _client = null;
            _announced.Clear();
            _sessions = [];
        }
        client.Dispose();
        process.Dispose();
        return EngineRun.Ended(ran, why);
    }

    /// <summary>gobgpd ended or could not start: said in the state until the supervisor starts it again after <paramref name="delay"/>.</summary>
    private void OnEngineEnded(EngineRun run, TimeSpan delay)
    {
        lock (_lock)
        {
            SetProblem(run.StartFailed
                ? $"gobgpd could not start: {run.Why}; retrying in {delay.TotalSeconds:0.#} s"
                : $"{run.Why} after {run.Ran.TotalSeconds:0.#} s; restarting in {delay.TotalSeconds:0.#} s (its routes are gone until then)");
        }
        if (run.StartFailed) LogStartFailed(_log, run.Why, delay.TotalSeconds);
        else LogExited(_log, run.Why, run.Ran.TotalSeconds, delay.TotalSeconds);
        Publish();
    }

    private RunningProgram StartGobgpd()
    {
        var o = _options;
        if (File.Exists(o.SocketPath)) File.Delete(o.SocketPath); // a stale socket makes gobgpd exit at once
        // No config file: it idles until StartBgp. Its only listener is the API socket (no pprof, and no BGP port: ListenPort -1).
        var command = new ProgramCommand(o.Gobgpd, [$"--api-hosts=unix://{o.SocketPath}", "--pprof-disable", "--log-plain", "--log-level=info"])
        {
            NetworkNamespace = o.NetworkNamespace,
        };
        var process = ProgramRunner.Start(command, _gobgpLog);
        File.WriteAllText(o.PidPath, process.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture) + "\n");
        LogStarted(_log, process.Pid, o.SocketPath);
        return process;
    }

    /// <summary>Waits for the API socket, starts the BGP instance (once: a second StartBgp empties the RIB) and adds the peers it lacks.</summary>
    private async Task<GobgpClient> ConnectAsync(RunningProgram process, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(_options.SocketPath))
        {
            if (process.HasExited) throw new IOException($"gobgpd exited with code {process.ExitCode} before it opened its API socket");
            if (clock.Elapsed > SocketWait) throw new TimeoutException($"gobgpd did not open {_options.SocketPath} within {SocketWait.TotalSeconds:0} s");
            await Task.Delay(TimeSpan.FromMilliseconds(20), _time, ct);
        }
        var client = new GobgpClient(_options.SocketPath);
        try
        {
            // The socket file exists a moment before gobgpd accepts on it.
            for (var attempt = 0; ; attempt++)
            {
                try
                {
                    if (await client.GetAsnAsync(ct) == 0) await client.StartAsync(_options, ct);
                    break;
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && attempt < 50 && !process.HasExited)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(50), _time, ct);
                }
            }
            var have = (await client.ListPeersAsync(ct)).Select(s => s.Address).ToHashSet();
            foreach (var peer in _options.Peers.Where(p => !have.Contains(p.Address)))
            {
                await client.AddPeerAsync(_options, peer, ct);
                LogPeerAdded(_log, peer.Address.ToString(), peer.Asn, _options.LocalAsn);
            }
            return client;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>Makes gobgpd's RIB the desired set: withdraws what is no longer wanted, then adds what is new.</summary>
    private async Task SyncAsync(GobgpClient client, CancellationToken ct)
    {
        IReadOnlyList<IPAddress> want;
        List<IPAddress> remove;
        lock (_lock)
        {
            want = _desired;
            remove = _announced.Where(v => !want.Contains(v)).ToList();
        }
        var changed = false;
        foreach (var vip in remove)
        {
            await client.DeletePathAsync(vip, ct);
            lock (_lock) _announced.Remove(vip);
            LogWithdrew(_log, vip.ToString());
            changed = true;
        }
        foreach (var vip in want)
        {
            bool skip;
            lock (_lock) skip = _announced.Contains(vip) || !HasPeerFor(vip);
            if (skip) continue;
            await client.AddPathAsync(vip, ct);
            lock (_lock) _announced.Add(vip);
            LogAnnounced(_log, vip.ToString());
            changed = true;
        }
        if (changed) Publish();
    }

    private async Task PollAsync(GobgpClient client, CancellationToken ct)
    {
        var sessions = (await client.ListPeersAsync(ct)).OrderBy(s => s.Address.ToString(), StringComparer.Ordinal).ToList();
        IReadOnlyList<BgpSession> before;
        lock (_lock)
        {
            before = _sessions;
            if (before.SequenceEqual(sessions)) return;
            _sessions = sessions;
        }
        foreach (var s in sessions)
        {
            var was = before.FirstOrDefault(b => b.Address.Equals(s.Address))?.State ?? "NONE";
            if (was == s.State) continue;
            if (s.Established || was == "ESTABLISHED") LogSessionInfo(_log, s.Address.ToString(), s.Asn, was, s.State);
            else LogSessionDebug(_log, s.Address.ToString(), s.Asn, was, s.State);
        }
        Publish();
    }

    /// <summary>A VIP can only be announced to a peer of its family.</summary>
    private bool HasPeerFor(IPAddress vip) => _options.Peers.Any(p => p.Address.AddressFamily == vip.AddressFamily);

    private async Task TerminateAsync(RunningProgram p, CancellationToken ct)
    {
        if (await p.StopAsync(EngineProcess.StopWait, ct)) LogStopped(_log, p.Pid);
        else LogKilled(_log, p.Pid, EngineProcess.StopWait.TotalSeconds);
        TryDelete(_options.PidPath);
    }

    /// <summary>A gobgpd left running by a daemon that died (its pid file, its socket on the command line): stop it before starting ours.</summary>
    private async Task StopStaleAsync(CancellationToken ct)
    {
        if (EngineProcess.ReadPid(_options.PidPath) is not { } pid || !ProgramRunner.Runs(pid, "gobgpd", $"--api-hosts=unix://{_options.SocketPath}")) return;
        LogStale(_log, pid, _options.PidPath);
        await ProgramRunner.StopAsync(pid, EngineProcess.StopWait, ct);
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Call with the lock held, then <see cref="Publish"/>. Null: no problem beyond what the sessions say.</summary>
    private void SetProblem(string? problem) => _problem = problem ?? "";

    private AnnouncerState BuildState()
    {
        var established = _sessions.Where(s => s.Established).Select(s => s.Address.AddressFamily).ToHashSet();
        var vips = _desired.Select(v => new VipState(v, _running && _announced.Contains(v) && established.Contains(v.AddressFamily))).ToList();
        var healthy = _running && established.Count > 0;
        string detail;
        if (_problem.Length > 0 || !_running) detail = _problem;
        else
        {
            var up = _sessions.Count(s => s.Established);
            var others = _sessions.Where(s => !s.Established).Select(s => $"{s.Address} {s.State}");
            detail = $"{up}/{_options.Peers.Count} sessions established{string.Concat(others.Select(o => "; " + o))}; {_announced.Count} routes announced";
            var orphans = _desired.Where(v => !HasPeerFor(v)).ToList();
            if (orphans.Count > 0) detail += $"; no peer of the family of {string.Join(", ", orphans)}";
        }
        if (_since is null || _state is null || _state.Healthy != healthy) _since = _time.GetUtcNow();
        return new AnnouncerState(Name, _stopped ? AnnouncerRole.Stopped : AnnouncerRole.None, vips, healthy, detail, _since, _engine.Restarts);
    }

    private void Publish()
    {
        AnnouncerState state;
        lock (_lock) state = _state = BuildState();
        try { Changed?.Invoke(state); }
        catch (Exception e) { LogListenerFailed(_log, e); }
    }

    [LoggerMessage(EventId = 9201, Level = LogLevel.Information, Message = "gobgpd started (pid {Pid}), API on {Socket}")]
    private static partial void LogStarted(ILogger logger, int pid, string socket);

    [LoggerMessage(EventId = 9202, Level = LogLevel.Information, Message = "BGP peer {Peer} AS{PeerAsn} added (local AS{LocalAsn})")]
    private static partial void LogPeerAdded(ILogger logger, string peer, uint peerAsn, uint localAsn);

    [LoggerMessage(EventId = 9203, Level = LogLevel.Information, Message = "BGP session {Peer} AS{Asn}: {From} -> {To}")]
    private static partial void LogSessionInfo(ILogger logger, string peer, uint asn, string from, string to);

    [LoggerMessage(EventId = 9204, Level = LogLevel.Debug, Message = "BGP session {Peer} AS{Asn}: {From} -> {To}")]
    private static partial void LogSessionDebug(ILogger logger, string peer, uint asn, string from, string to);

    [LoggerMessage(EventId = 9205, Level = LogLevel.Information, Message = "Announced {Vip}")]
    private static partial void LogAnnounced(ILogger logger, string vip);

    [LoggerMessage(EventId = 9206, Level = LogLevel.Information, Message = "Withdrew {Vip}")]
    private static partial void LogWithdrew(ILogger logger, string vip);

    [LoggerMessage(EventId = 9207, Level = LogLevel.Information, Message = "Withdrew all {Count} routes; the established peers were told within {Ms} ms")]
    private static partial void LogWithdrawn(ILogger logger, int count, long ms);

    [LoggerMessage(EventId = 9208, Level = LogLevel.Warning, Message = "Withdrawing {Count} routes did not complete within {Ms} ms: {Reason}")]
    private static partial void LogWithdrawIncomplete(ILogger logger, int count, long ms, string reason);

    [LoggerMessage(EventId = 9209, Level = LogLevel.Error, Message = "{Why} after {Seconds:0.#} s; restarting in {Backoff:0.#} s")]
    private static partial void LogExited(ILogger logger, string why, double seconds, double backoff);

    [LoggerMessage(EventId = 9210, Level = LogLevel.Error, Message = "gobgpd could not start: {Reason}; retrying in {Backoff:0.#} s")]
    private static partial void LogStartFailed(ILogger logger, string reason, double backoff);

    [LoggerMessage(EventId = 9211, Level = LogLevel.Information, Message = "gobgpd (pid {Pid}) stopped")]
    private static partial void LogStopped(ILogger logger, int pid);

    [LoggerMessage(EventId = 9212, Level = LogLevel.Warning, Message = "gobgpd (pid {Pid}) did not stop within {Seconds} s of SIGTERM; killed")]
    private static partial void LogKilled(ILogger logger, int pid, double seconds);

    [LoggerMessage(EventId = 9213, Level = LogLevel.Warning, Message = "A gobgpd from an earlier run (pid {Pid}, {PidFile}) is still running; stopping it")]
    private static partial void LogStale(ILogger logger, int pid, string pidFile);

    [LoggerMessage(EventId = 9214, Level = LogLevel.Information, Message = "VIPs to announce: {Count} ({Vips})")]
    private static partial void LogDesired(ILogger logger, int count, string vips);

    [LoggerMessage(EventId = 9215, Level = LogLevel.Error, Message = "An announcer state listener failed")]
    private static partial void LogListenerFailed(ILogger logger, Exception e);

}
