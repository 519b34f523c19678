using System.Net;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Merlin.Linux;

namespace Merlin.Announcer.Vrrp;

/// <summary>
/// VRRP through keepalived: renders its configuration (<see cref="KeepalivedConfig"/>), runs it as a
/// supervised child (restarted with backoff when it dies) or adopts the one a previous daemon left running,
/// and learns MASTER/BACKUP/FAULT from the lines keepalived writes to its notify FIFO.
/// </summary>
/// <remarks>
/// A reload (SIGHUP) restarts the master-down timer of a BACKUP instance (keepalived 2.2.7,
/// vrrp_scheduler.c: every instance that is not MASTER is set up again as "BACKUP (init)") — during a cold
/// start that hands the election to the peer. A MASTER keeps its state across a reload and adverts at once.
/// So keepalived is reloaded only while it is MASTER, the only state in which the service VIPs are on the
/// interface; a BACKUP keeps the set it loaded, and on becoming MASTER is reloaded with the current one.
/// Who keeps the VIPs is decided through the priority (<see cref="PriorityHold"/>), changed through a
/// tracked file, never a reload. Stopping leaves keepalived running: the next daemon adopts it, so a
/// restart of merlin moves nothing; <see cref="ReleaseAsync"/> stops it.
/// </remarks>
public sealed partial class KeepalivedAnnouncer : IAnnouncer
{
    public const string Name = "vrrp";

    /// <summary>SIGHUP before keepalived installed its handlers would kill it: reload only after its first state line, or this long.</summary>
    private static readonly TimeSpan ReloadGate = TimeSpan.FromSeconds(5);
    private const string WakeLine = "MERLIN WAKE";

    private readonly VrrpOptions _options;
    private readonly ILogger _log;
    private readonly ILogger _keepalivedLog;
    private readonly TimeProvider _time;
    private readonly EngineSupervisor _engine;
    private readonly Lock _lock = new();
    /// <summary>Serializes writes of the tracked priority file; taken before <see cref="_lock"/>, never inside it.</summary>
    private readonly Lock _holdLock = new();
    private readonly Channel<bool> _reload = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    private IReadOnlyList<IPAddress> _desired = [];
    /// <summary>The set <see cref="AnnounceAsync"/> was last given, to pass over the same instance without normalising it.</summary>
    private IReadOnlyCollection<IPAddress>? _given;
    private IReadOnlyList<IPAddress> _loaded = [];
    private AnnouncerRole _role = AnnouncerRole.Init;
    private long? _backupSince;
    /// <summary>This MASTER won a first election and its start window has not ended.</summary>
    private bool _firstElection;
    private long _elections;
    private bool _drained;
    private int? _holdWritten;
    private ITimer? _windowTimer;
    private int? _adopted;
    /// <summary>Adopted, and its state not reported yet: a MASTER found then held the VIPs before this daemon, so it keeps them.</summary>
    private bool _adopting;
    private int? _priority;
    private DateTimeOffset? _since;
    private string _detail = "not started";
    private bool _running;
    private long _reloads;
    private AnnouncerState _state;

    private CancellationTokenSource? _stop;
    private Task? _supervisor;
    private RunningProgram? _process;
    private TaskCompletionSource _firstState = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private FileStream? _fifo;
    private Thread? _fifoReader;
    private volatile bool _stopping;

    public KeepalivedAnnouncer(VrrpOptions options, ILoggerFactory logs, TimeProvider? time = null)
    {
        if (options.Validate() is { } error) throw new ArgumentException($"{error.Flag}: {error.Reason}", nameof(options));
        _options = options;
        _log = logs.CreateLogger<KeepalivedAnnouncer>();
        _keepalivedLog = logs.CreateLogger("Merlin.Announcer.Keepalived");
        _time = time ?? TimeProvider.System;
        _engine = new EngineSupervisor(_time);
        _state = BuildState();
    }

    public string Mode => Name;

    public VrrpOptions Options => _options;

    public AnnouncerState State { get { lock (_lock) return _state; } }

    /// <summary>SIGHUPs sent (tests).</summary>
    public long Reloads => Interlocked.Read(ref _reloads);

    /// <summary>The running keepalived's PID (its parent process), or null.</summary>
    public int? Pid { get { lock (_lock) return _adopted ?? (_process is { HasExited: false } p ? p.Pid : null); } }

    /// <summary>True when this announcer adopted a keepalived a previous daemon left running.</summary>
    public bool Adopted { get; private set; }

    public event Action<AnnouncerState>? Changed;

    public Task AnnounceAsync(IReadOnlyCollection<IPAddress> vips, CancellationToken ct)
    {
        // Every reconcile pass announces; the daemon's VIP set is the same instance until a VIP comes or goes.
        lock (_lock) if (ReferenceEquals(vips, _given)) return Task.CompletedTask;
        var normalized = KeepalivedConfig.Normalize(vips, _options.ManagementVip);
        lock (_lock)
        {
            _given = vips;
            if (normalized.SequenceEqual(_desired)) return Task.CompletedTask;
            _desired = normalized;
        }
        LogDesired(_log, normalized.Count, string.Join(" ", normalized));
        _reload.Writer.TryWrite(true);
        return Task.CompletedTask;
    }

    /// <summary>Drained: the instance goes to FAULT (priority -254 through the tracked file), which releases the VIPs
    /// with a priority-0 advert, so the peer takes over at once. Undrained: it competes again.</summary>
    public Task DrainAsync(bool drained, CancellationToken ct)
    {
        lock (_lock)
        {
            if (_drained == drained) return Task.CompletedTask;
            _drained = drained;
        }
        UpdateHold();
        return Task.CompletedTask;
    }

    public async Task StartAsync(CancellationToken ct)
    {
        if (_supervisor is not null) throw new InvalidOperationException("already started");
        Directory.CreateDirectory(_options.StateDir);
        var adopt = Adoptable();
        if (adopt is null) await StopStaleAsync(ct);
        // Adopting before the FIFO is read: a line keepalived buffered while no daemon read it (the previous
        // daemon's last priority change, a transition) is then read as the adopted state, never as an election.
        var probe = adopt is { } pid ? Adopt(pid) : null;
        OpenFifo(create: adopt is null);
        _stop = new CancellationTokenSource();
        if (probe is { } value) WriteHold(value);
        _supervisor = Task.Run(() => SuperviseAsync(adopt, _stop.Token), CancellationToken.None);
    }

    /// <summary>
    /// The PID of a keepalived a previous daemon left running with this configuration (apart from the service
    /// VIPs), which this daemon can take over without a restart or an election; null when there is none.
    /// </summary>
    private int? Adoptable()
    {
        if (EngineProcess.ReadPid(_options.PidPath) is not { } pid || !IsOurKeepalived(pid) || ProgramRunner.IsZombie(pid)) return null;
        try
        {
            if (!File.Exists(_options.FifoPath) || !File.Exists(_options.PriorityFilePath)) return null;
            var running = File.ReadAllText(_options.ConfigPath);
            return KeepalivedConfig.Settings(running) == KeepalivedConfig.Settings(KeepalivedConfig.Render(_options, [])) ? pid : null;
        }
        catch (IOException) { return null; }
    }

    /// <summary>
    /// Takes over a running keepalived: what it holds is what its configuration says; its state is learned by
    /// changing the tracked priority by one (keepalived answers with a MASTER_PRIORITY or BACKUP_PRIORITY line),
    /// after which <see cref="UpdateHold"/> writes the value this daemon wants.
    /// </summary>
    /// <returns>The probe value to write once the FIFO is read, or null (drained: its FAULT is known).</returns>
    private int? Adopt(int pid)
    {
        var loaded = KeepalivedConfig.ServiceVips(File.ReadAllText(_options.ConfigPath));
        var current = ReadHold();
        lock (_lock)
        {
            _adopted = pid;
            _loaded = loaded;
            _written = loaded;
            _running = true;
            _adopting = true;
            SetRole(AnnouncerRole.Init, null, "adopted a running keepalived; asking its state");
        }
        Adopted = true;
        LogAdopted(_log, pid, _options.ConfigPath);
        if (_drained && current == PriorityHold.Fault)
        {
            lock (_lock)
            {
                _adopting = false;
                SetRole(AnnouncerRole.Fault, null, "drained: the instance is in FAULT and holds no VIP");
            }
            _firstState.TrySetResult();
            LogAdoptedState(_log, _options.InstanceName, pid, "FAULT", "drained: it holds no VIP");
            Publish();
            return null;
        }
        Publish();
        return PriorityHold.Probe(_options.Priority, current);
    }

    /// <summary>
    /// Stops supervising and leaves keepalived running in its state (like the dataplane, which stays
    /// programmed): the next daemon adopts it, so a restart of merlin moves no VIP. Drain the node first to
    /// hand the VIPs to the peer; <see cref="ReleaseAsync"/> also stops keepalived.
    /// </summary>
    public async Task StopAsync(CancellationToken ct)
    {
        if (await StopSupervisingAsync() is { } pid) LogLeftRunning(_log, pid);
        lock (_lock)
        {
            _process?.Dispose();
            _process = null;
        }
    }

    /// <summary>Stops supervising and stops keepalived (SIGTERM by PID), which releases the VIPs with a priority-0 advert.</summary>
    public async Task ReleaseAsync(CancellationToken ct)
    {
        var vrrpChild = EngineProcess.ReadPid(_options.VrrpPidPath);
        await StopSupervisingAsync();
        RunningProgram? child;
        int? adopted;
        lock (_lock)
        {
            child = _process;
            adopted = _adopted;
            _process = null;
            _adopted = null;
        }
        if (child is not null)
        {
            await TerminateAsync(child, vrrpChild, ct);
            child.Dispose();
        }
        else if (adopted is { } pid && IsOurKeepalived(pid))
        {
            await ProgramRunner.StopAsync(pid, EngineProcess.StopWait, ct);
            LogStopped(_log, pid);
        }
        lock (_lock) SetRole(AnnouncerRole.Stopped, null, "keepalived stopped; the VIPs are released to the peer");
        Publish();
        try { File.Delete(_options.FifoPath); } catch (IOException) { }
    }

    /// <summary>Ends the supervisor and the FIFO reader (once); returns the PID of the keepalived still running.</summary>
    private async Task<int?> StopSupervisingAsync()
    {
        if (_stopping) return null;
        _stopping = true;
        if (_stop is not null) await _stop.CancelAsync();
        if (_supervisor is not null)
        {
            try { await _supervisor; }
            catch (OperationCanceledException) { }
        }
        int? pid;
        lock (_lock)
        {
            pid = _adopted ?? (_process is { HasExited: false } p ? p.Pid : null);
            _windowTimer?.Dispose();
            _running = false;
            SetRole(AnnouncerRole.Stopped, null, pid is null ? "keepalived is not running" : $"merlin stopped; keepalived (pid {pid}) keeps running for the next daemon to adopt");
        }
        Publish();
        CloseFifo(delete: false);
        return pid;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None);
        _stop?.Dispose();
    }

    private Task SuperviseAsync(int? adopted, CancellationToken ct) => _engine.RunAsync(async ct =>
    {
        var run = await RunOnceAsync(adopted, ct);
        adopted = null;
        return run;
    }, OnEngineEnded, ct,
        // A VRRP child that outlived its parent would still hold the VIPs and make the new one refuse to start.
        StopStaleAsync);

    /// <summary>Starts (or adopts) keepalived and reloads it as the VIPs change, until it exits; throws when stopping (StopAsync ends the process).</summary>
    private async Task<EngineRun> RunOnceAsync(int? adopted, CancellationToken ct)
    {
        IReadOnlyList<IPAddress> vips;
        lock (_lock) vips = _desired;
        Engine process;
        try
        {
            if (adopted is { } pid)
            {
                process = Engine.Adopted(pid);
            }
            else
            {
                WriteConfig(vips);
                int hold;
                lock (_lock) hold = HoldValue();
                WriteHold(hold);
                process = Engine.Child(StartKeepalived());
            }
        }
        catch (Exception e) when (e is IOException or System.ComponentModel.Win32Exception or UnauthorizedAccessException)
        {
            return EngineRun.FailedToStart(e.Message, processStarted: false);
        }

        var started = _time.GetTimestamp();
        var exited = process.Exited;
        while (true)
        {
            var wake = _reload.Reader.WaitToReadAsync(ct).AsTask();
            if (await Task.WhenAny(exited, wake) == exited) break;
            await wake; // throws when stopping
            _reload.Reader.TryRead(out _);
            // keepalived dies of a SIGHUP that comes before its signal handlers: wait for its first state.
            await Task.WhenAny(_firstState.Task, exited, Task.Delay(ReloadGate, _time, ct));
            ct.ThrowIfCancellationRequested();
            if (exited.IsCompleted) break;
            IReadOnlyList<IPAddress> want;
            lock (_lock)
            {
                want = _desired;
                // Only a MASTER is reloaded: a reload restarts a BACKUP's master-down timer (see the remarks).
                // A BACKUP holds no VIP; the MASTER line wakes this loop again.
                if (_role != AnnouncerRole.Master || want.SequenceEqual(_loaded)) continue;
            }
            WriteConfig(want);
            if (!ProcessSignal.Send(process.Pid, ProcessSignal.HangUp)) break;
            Interlocked.Increment(ref _reloads);
            lock (_lock) _loaded = want;
            LogReloaded(_log, process.Pid, want.Count);
            Publish();
            // Let keepalived finish one reload before the next: a burst of store changes costs one or two.
            await Task.Delay(TimeSpan.FromMilliseconds(500), _time, ct);
        }

        await exited;
        var code = process.ExitCode;
        var ran = _time.GetElapsedTime(started);
        lock (_lock)
        {
            _process = null;
            _adopted = null;
        }
        process.Dispose();
        return EngineRun.Ended(ran, $"keepalived exited with code {code}", code);
    }

    /// <summary>keepalived exited or could not start: FAULT until the supervisor starts it again after <paramref name="delay"/>.</summary>
    private void OnEngineEnded(EngineRun run, TimeSpan delay)
    {
        lock (_lock)
        {
            _running = false;
            SetRole(AnnouncerRole.Fault, null, run.StartFailed
                ? $"keepalived could not start: {run.Why}; retrying in {delay.TotalSeconds:0.#} s"
                : $"{run.Why} after {run.Ran.TotalSeconds:0.#} s; restarting in {delay.TotalSeconds:0.#} s");
        }
        if (run.StartFailed) LogStartFailed(_log, run.Why, delay.TotalSeconds);
        else LogExited(_log, run.ExitCode ?? -1, run.Ran.TotalSeconds, delay.TotalSeconds);
        Publish();
    }

    private RunningProgram StartKeepalived()
    {
        var o = _options;
        // -n: stay in the foreground (our child); -l -D: detailed log to stdout, logged line by line; -G: no
        // syslog; -P: only the VRRP subsystem; per-daemon pid files, so two daemons on one machine never collide;
        // -s: keepalived enters the network namespace itself.
        List<string> args = ["-n", "-l", "-D", "-G", "-P", "-f", o.ConfigPath, "-p", o.PidPath, "-r", o.VrrpPidPath];
        if (o.NetworkNamespace is { } ns) args.AddRange(["-s", ns]);
        _firstState = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // INIT before the start: keepalived's first FIFO line (BACKUP) may be read before Start returns.
        lock (_lock)
        {
            _loaded = _written; // what the configuration it reads at start says
            _running = true;
            SetRole(AnnouncerRole.Init, null, "keepalived starting");
        }
        RunningProgram process;
        try
        {
            // keepalived -l -D prefixes every line with its own timestamp: the daemon's log has one already.
            process = ProgramRunner.Start(new ProgramCommand(o.Keepalived, args), _keepalivedLog);
        }
        catch
        {
            lock (_lock) _running = false;
            throw;
        }
        lock (_lock) _process = process;
        LogStarted(_log, process.Pid, o.InstanceName, o.Interface, o.ConfigPath);
        Publish();
        return process;
    }

    /// <summary>The VIPs written by the last <see cref="WriteConfig"/>, which is what a starting keepalived reads.</summary>
    private IReadOnlyList<IPAddress> _written = [];

    /// <summary>Writes the configuration atomically (a reload never reads half a file).</summary>
    private void WriteConfig(IReadOnlyList<IPAddress> vips)
    {
        var text = KeepalivedConfig.Render(_options, vips);
        var temp = _options.ConfigPath + ".tmp";
        File.WriteAllText(temp, text, new UTF8Encoding(false));
        File.Move(temp, _options.ConfigPath, overwrite: true);
        _written = vips;
    }

    private async Task TerminateAsync(RunningProgram p, int? vrrpChild, CancellationToken ct)
    {
        if (p.HasExited) return;
        if (await p.StopAsync(EngineProcess.StopWait, ct))
        {
            LogStopped(_log, p.Pid);
            return;
        }
        LogKilled(_log, p.Pid, EngineProcess.StopWait.TotalSeconds);
        if (vrrpChild is { } child && IsOurKeepalived(child)) ProcessSignal.Send(child, ProcessSignal.Kill);
    }

    /// <summary>A keepalived left running with this configuration by a daemon that died: stop it before starting ours.</summary>
    private async Task StopStaleAsync(CancellationToken ct)
    {
        foreach (var pidFile in new[] { _options.PidPath, _options.VrrpPidPath })
        {
            if (EngineProcess.ReadPid(pidFile) is not { } pid || !IsOurKeepalived(pid)) continue;
            LogStale(_log, pid, pidFile);
            await ProgramRunner.StopAsync(pid, EngineProcess.StopWait, ct);
        }
    }

    /// <summary>True when <paramref name="pid"/> is a keepalived started with this daemon's configuration file.</summary>
    private bool IsOurKeepalived(int pid) => ProgramRunner.Runs(pid, "keepalived", _options.ConfigPath);

    /// <param name="create">False when adopting: the running keepalived writes to the FIFO it opened at its start.</param>
    private void OpenFifo(bool create)
    {
        if (create)
        {
            if (File.Exists(_options.FifoPath)) File.Delete(_options.FifoPath);
            Fifo.Create(_options.FifoPath);
        }
        // Read and write: opening never waits for a writer, and a keepalived restart (writer closes) is no end of file.
        _fifo = new FileStream(_options.FifoPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
        var reader = new StreamReader(_fifo, Encoding.UTF8);
        _fifoReader = new Thread(() => ReadFifo(reader)) { IsBackground = true, Name = "keepalived-fifo" };
        _fifoReader.Start();
    }

    private void ReadFifo(StreamReader reader)
    {
        try
        {
            while (reader.ReadLine() is { } line)
            {
                if (line == WakeLine && _stopping) return;
                OnFifoLine(line);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            if (!_stopping) LogFifoFailed(_log, e.Message);
        }
    }

    /// <summary>One FIFO line: a state change of our instance updates the role; anything else is logged at debug level.</summary>
    internal void OnFifoLine(string line)
    {
        var parsed = NotifyLine.Parse(line);
        if (parsed is null || parsed.Kind != "INSTANCE" || parsed.Name != _options.InstanceName || parsed.Role is not { } role)
        {
            LogFifoIgnored(_log, line);
            return;
        }
        AnnouncerRole was;
        int? adopted = null;
        lock (_lock)
        {
            was = _role;
            // A priority change is no transition: its state word is only trusted to learn an adopted keepalived's
            // state. keepalived says BACKUP_PRIORITY for every state but MASTER, and was seen to say it for a
            // change that raced with its own BACKUP -> MASTER transition.
            if (parsed.IsPriorityChange && was != AnnouncerRole.Init) role = was;
            // The first state line after an adoption is the state the running keepalived was in, not a transition.
            if (_adopting && was == AnnouncerRole.Init) adopted = _adopted;
            if (role != was) OnTransition(was, role);
            SetRole(role, parsed.Priority, role switch
            {
                AnnouncerRole.Master => "holds the VIPs",
                AnnouncerRole.Backup => "a peer holds the VIPs",
                AnnouncerRole.Fault => "cannot hold the VIPs (interface down?)",
                _ => "keepalived stopped the instance",
            });
        }
        _firstState.TrySetResult();
        if (adopted is { } pid)
            // (No priority: the line answers the probe's value, not the one written next.)
            LogAdoptedState(_log, _options.InstanceName, pid, role.ToString().ToUpperInvariant(), role switch
            {
                AnnouncerRole.Master => _options.Preempt ? "it keeps the VIPs while no higher priority advertises" : "it keeps the VIPs",
                AnnouncerRole.Backup => "a peer holds the VIPs",
                _ => "it holds no VIP",
            });
        else if (was != role) LogTransition(_options.InstanceName, was.ToString().ToUpperInvariant(), parsed.State, parsed.Priority ?? 0);
        // A new MASTER may hold an older VIP set than the daemon wants: the supervisor reloads it now.
        if (role == AnnouncerRole.Master) _reload.Writer.TryWrite(true);
        UpdateHold();
        Publish();
    }

    /// <summary>
    /// Election bookkeeping, with the lock held. A MASTER whose BACKUP spell lasted no longer than one
    /// master-down interval (plus an advert of slack) never heard a master: it took VIPs nobody held (a cold
    /// start, or the peer was down too). Any longer and it heard adverts until they stopped: a takeover.
    /// </summary>
    private void OnTransition(AnnouncerRole was, AnnouncerRole role)
    {
        var now = _time.GetTimestamp();
        if (role == AnnouncerRole.Backup) _backupSince = now;
        if (role == AnnouncerRole.Master)
        {
            _firstElection = !_adopting && (was != AnnouncerRole.Backup ||
                _backupSince is { } b && _time.GetElapsedTime(b) <= _options.DownInterval + _options.AdvertInterval);
            if (_firstElection && !_options.Preempt)
            {
                _windowTimer?.Dispose();
                var election = ++_elections;
                _windowTimer = _time.CreateTimer(_ => EndWindow(election), null, _options.StartWindow, Timeout.InfiniteTimeSpan);
            }
            // An adopted MASTER was one already (LogAdoptedState says so): no election happened.
            if (!_adopting)
                LogElection(_log, _options.InstanceName, _firstElection ? "it heard no master since it started: a first election" : "it took over from a master it had heard",
                    _firstElection && !_options.Preempt ? $"a higher priority may still take the VIPs for {_options.StartWindow.TotalSeconds:0} s" : "it keeps them");
        }
        _adopting = false;
    }

    /// <summary>The start window of election <paramref name="election"/> ended: if it is still MASTER, it keeps the VIPs now.</summary>
    private void EndWindow(long election)
    {
        lock (_lock)
        {
            if (election != _elections) return;
            _firstElection = false;
        }
        UpdateHold();
    }

    /// <summary>The number the tracked priority file should hold now (lock held).</summary>
    private int HoldValue() => PriorityHold.Value(_options, _drained, _role == AnnouncerRole.Master && _running, _firstElection);

    /// <summary>Writes the tracked priority file when the value it should hold changed.</summary>
    private void UpdateHold()
    {
        int value;
        // One writer at a time (the FIFO reader, the start window's timer, a drain, the start's probe): two
        // writers shared the temp file, and one could leave the file at its value while _holdWritten said the
        // other's, which no later change corrected (an adopted MASTER left at its probe priority).
        lock (_holdLock)
        {
            lock (_lock)
            {
                if (_stopping || !_running) return;
                value = HoldValue();
                if (value == _holdWritten) return;
            }
            WriteHold(value);
        }
        LogHold(_log, _options.InstanceName, value, PriorityHold.Effective(_options.Priority, value));
    }

    private void WriteHold(int value)
    {
        lock (_holdLock)
        {
            try
            {
                // Atomically: keepalived reads the file on every change it sees (inotify, a rename included).
                var temp = _options.PriorityFilePath + ".tmp";
                File.WriteAllText(temp, value.ToString(System.Globalization.CultureInfo.InvariantCulture) + "\n");
                File.Move(temp, _options.PriorityFilePath, overwrite: true);
                lock (_lock) _holdWritten = value;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                LogHoldFailed(_log, _options.PriorityFilePath, e.Message);
            }
        }
    }

    private int? ReadHold()
    {
        try { return int.TryParse(File.ReadAllText(_options.PriorityFilePath).Trim(), System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : null; }
        catch (IOException) { return null; }
    }

    /// <param name="delete">False when keepalived keeps running: it still writes to this FIFO, for the next daemon.</param>
    private void CloseFifo(bool delete)
    {
        if (_fifo is null) return;
        try
        {
            // Wake the reader (blocked in read(2)) with a line of our own, then close.
            using var writer = new FileStream(_options.FifoPath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0);
            writer.Write(Encoding.UTF8.GetBytes(WakeLine + "\n"));
        }
        catch (IOException) { }
        _fifoReader?.Join(TimeSpan.FromSeconds(2));
        _fifo.Dispose();
        _fifo = null;
        if (!delete) return;
        try { File.Delete(_options.FifoPath); } catch (IOException) { }
    }

    /// <summary>Call with the lock held.</summary>
    private void SetRole(AnnouncerRole role, int? priority, string detail)
    {
        if (role != _role || _since is null) _since = _time.GetUtcNow();
        _role = role;
        _priority = priority ?? _priority;
        _detail = detail;
        _state = BuildState();
    }

    private AnnouncerState BuildState()
    {
        var holds = _running && _role == AnnouncerRole.Master;
        var vips = new List<VipState>(_desired.Count + 1) { new(_options.ManagementVip, holds, Management: true) };
        foreach (var v in _desired) vips.Add(new VipState(v, holds && _loaded.Contains(v)));
        var healthy = _running && _role is AnnouncerRole.Master or AnnouncerRole.Backup;
        var detail = _priority is { } p && _running ? $"{_detail} (instance {_options.InstanceName} on {_options.Interface}, priority {p})" : _detail;
        return new AnnouncerState(Name, _role, vips, healthy, detail, _since, _engine.Restarts);
    }

    private void Publish()
    {
        AnnouncerState state;
        lock (_lock) state = _state = BuildState();
        try { Changed?.Invoke(state); }
        catch (Exception e) { LogListenerFailed(_log, e); }
    }

    [LoggerMessage(EventId = 9001, Level = LogLevel.Information, Message = "keepalived started (pid {Pid}): instance {Instance} on {Interface}, config {Config}")]
    private static partial void LogStarted(ILogger logger, int pid, string instance, string @interface, string config);

    [LoggerMessage(EventId = 9002, Level = LogLevel.Warning, Message = "VRRP {Instance}: {From} -> {To} (priority {Priority})")]
    private static partial void LogTransitionWarning(ILogger logger, string instance, string from, string to, int priority);

    [LoggerMessage(EventId = 9003, Level = LogLevel.Information, Message = "VRRP {Instance}: {From} -> {To} (priority {Priority})")]
    private static partial void LogTransitionInfo(ILogger logger, string instance, string from, string to, int priority);

    private void LogTransition(string instance, string from, string to, int priority)
    {
        if (to == "FAULT") LogTransitionWarning(_log, instance, from, to, priority);
        else LogTransitionInfo(_log, instance, from, to, priority);
    }

    [LoggerMessage(EventId = 9004, Level = LogLevel.Information, Message = "keepalived reloaded (SIGHUP to pid {Pid}): {Count} service VIPs")]
    private static partial void LogReloaded(ILogger logger, int pid, int count);

    [LoggerMessage(EventId = 9005, Level = LogLevel.Error, Message = "keepalived exited with code {Code} after {Seconds:0.#} s; restarting in {Backoff:0.#} s")]
    private static partial void LogExited(ILogger logger, int code, double seconds, double backoff);

    [LoggerMessage(EventId = 9006, Level = LogLevel.Error, Message = "keepalived could not start: {Reason}; retrying in {Backoff:0.#} s")]
    private static partial void LogStartFailed(ILogger logger, string reason, double backoff);

    [LoggerMessage(EventId = 9007, Level = LogLevel.Information, Message = "keepalived (pid {Pid}) stopped; it released the VIPs")]
    private static partial void LogStopped(ILogger logger, int pid);

    [LoggerMessage(EventId = 9008, Level = LogLevel.Warning, Message = "keepalived (pid {Pid}) did not stop within {Seconds} s of SIGTERM; killed")]
    private static partial void LogKilled(ILogger logger, int pid, double seconds);

    [LoggerMessage(EventId = 9009, Level = LogLevel.Warning, Message = "A keepalived from an earlier run (pid {Pid}, {PidFile}) is still running; stopping it")]
    private static partial void LogStale(ILogger logger, int pid, string pidFile);

    [LoggerMessage(EventId = 9010, Level = LogLevel.Debug, Message = "notify FIFO: ignored \"{Line}\"")]
    private static partial void LogFifoIgnored(ILogger logger, string line);

    [LoggerMessage(EventId = 9011, Level = LogLevel.Error, Message = "notify FIFO: reading failed ({Reason}); VRRP state changes are no longer seen")]
    private static partial void LogFifoFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 9012, Level = LogLevel.Information, Message = "Service VIPs to hold: {Count} ({Vips})")]
    private static partial void LogDesired(ILogger logger, int count, string vips);

    [LoggerMessage(EventId = 9013, Level = LogLevel.Error, Message = "An announcer state listener failed")]
    private static partial void LogListenerFailed(ILogger logger, Exception e);

    [LoggerMessage(EventId = 9016, Level = LogLevel.Information, Message = "Adopted the keepalived a previous daemon left running (pid {Pid}, {Config}): no restart, no election")]
    private static partial void LogAdopted(ILogger logger, int pid, string config);

    [LoggerMessage(EventId = 9021, Level = LogLevel.Information, Message = "VRRP {Instance}: adopted running keepalived pid {Pid}, state {State}; {Then}")]
    private static partial void LogAdoptedState(ILogger logger, string instance, int pid, string state, string then);

    [LoggerMessage(EventId = 9017, Level = LogLevel.Information, Message = "keepalived (pid {Pid}) keeps running with its VRRP state; the next daemon adopts it")]
    private static partial void LogLeftRunning(ILogger logger, int pid);

    [LoggerMessage(EventId = 9018, Level = LogLevel.Information, Message = "VRRP {Instance}: MASTER because {How}; {Then}")]
    private static partial void LogElection(ILogger logger, string instance, string how, string then);

    [LoggerMessage(EventId = 9019, Level = LogLevel.Information, Message = "VRRP {Instance}: priority file set to {Value} (effective priority {Effective})")]
    private static partial void LogHold(ILogger logger, string instance, int value, int effective);

    [LoggerMessage(EventId = 9020, Level = LogLevel.Error, Message = "Could not write the VRRP priority file {Path}: {Reason}")]
    private static partial void LogHoldFailed(ILogger logger, string path, string reason);

    /// <summary>The keepalived being supervised: our child, or one adopted from a previous daemon (not our child: polled).</summary>
    private sealed class Engine : IDisposable
    {
        private readonly RunningProgram? _child;

        private Engine(int pid, Task exited, RunningProgram? child)
        {
            Pid = pid;
            Exited = exited;
            _child = child;
        }

        public int Pid { get; }

        public Task Exited { get; }

        /// <summary>The child's exit code; -1 for an adopted process (its exit status goes to its parent).</summary>
        public int ExitCode => _child?.ExitCode ?? -1;

        public static Engine Child(RunningProgram p) => new(p.Pid, p.Exited, p);

        public static Engine Adopted(int pid) => new(pid, Task.Run(async () =>
        {
            while (ProcessSignal.IsAlive(pid) && !ProgramRunner.IsZombie(pid)) await Task.Delay(200);
        }), null);

        public void Dispose() => _child?.Dispose();
    }
}
