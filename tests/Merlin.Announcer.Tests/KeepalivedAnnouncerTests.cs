using System.Diagnostics;
using System.Net;
using Merlin.Announcer.Vrrp;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Merlin.Linux;

namespace Merlin.Announcer.Tests;

/// <summary>
/// The supervisor against a stand-in for keepalived (a shell script that takes keepalived's flags, writes its
/// pid file and FIFO lines, becomes MASTER when a trigger file appears, reports changes of its tracked priority
/// file as keepalived does with notify_priority_changes, counts SIGHUPs and answers SIGTERM with STOP): start,
/// reloads only while MASTER, the priority raised after the start window, restart after a crash, a stop that
/// leaves it running, adoption by a new announcer, release by PID. No root or keepalived needed; the real one
/// runs in VrrpElectionTests and VrrpLabTests.
/// </summary>
public class KeepalivedAnnouncerTests
{
    private const string FakeKeepalived = """
        #!/bin/sh
        while [ $# -gt 0 ]; do case "$1" in -f) conf=$2; shift;; -p) pidfile=$2; shift;; esac; shift; done
        fifo=$(awk '/notify_fifo/ {print $2}' "$conf")
        prio=$(awk '/file "/ {gsub(/"/, "", $2); print $2}' "$conf")
        echo $$ > "$pidfile"
        echo "fake keepalived $$ read $conf"
        exec 3<>"$fifo"  # as keepalived: read-write, so a write never waits for a reader
        trap 'echo hup >> "$conf.hups"' HUP
        trap 'echo "INSTANCE \"merlin_51\" STOP 150" >&3; rm -f "$pidfile"; exit 0' TERM
        state=BACKUP
        echo "INSTANCE \"merlin_51\" BACKUP 150" >&3
        last=$(cat "$prio" 2>/dev/null)
        i=0
        while [ $i -lt 1200 ]; do
          sleep 0.05; i=$((i+1))
          if [ $state = BACKUP ] && [ -e "$conf.master" ]; then state=MASTER; echo "INSTANCE \"merlin_51\" MASTER 150" >&3; fi
          v=$(cat "$prio" 2>/dev/null)
          if [ "$v" != "$last" ]; then last=$v; p=$((150+v)); [ $p -gt 254 ] && p=254; echo "INSTANCE \"merlin_51\" ${state}_PRIORITY $p" >&3; fi
        done
        """;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Supervisor_ReloadsOnlyWhileMaster_RaisesTheMasterAfterTheStartWindow_RestartsAfterACrash_LeavesItRunningForTheNextToAdopt()
    {
        using var dir = new TempDir("announcer");
        var fake = dir.File("keepalived");
        await File.WriteAllTextAsync(fake, FakeKeepalived.ReplaceLineEndings("\n") + "\n", Ct);
        if (!OperatingSystem.IsLinux()) { Assert.Skip("keepalived runs on Linux"); return; }
        File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var options = KeepalivedConfigTests.Options() with { StateDir = dir.File("state"), Keepalived = fake, StartWindow = TimeSpan.FromSeconds(1) };
        var master = options.ConfigPath + ".master";
        var hups = options.ConfigPath + ".hups";
        int? second = null;
        var logs = new ListLoggerFactory();
        _logs = logs;
        var announcer = new KeepalivedAnnouncer(options, logs);
        try
        {
            await announcer.StartAsync(Ct);
            await WaitAsync(() => announcer.State.Role == AnnouncerRole.Backup, "BACKUP after start");
            var first = announcer.Pid;
            Assert.NotNull(first);
            Assert.True(announcer.State.Healthy);
            Assert.Equal([(IPAddress.Parse("198.18.0.99"), false, true)], announcer.State.Vips.Select(v => (v.Address, v.Announced, v.Management)));
            Assert.Equal("0", (await File.ReadAllTextAsync(options.PriorityFilePath, Ct)).Trim());

            // A BACKUP is never reloaded: a SIGHUP would restart its master-down timer.
            await announcer.AnnounceAsync([IPAddress.Parse("198.18.0.100")], Ct);
            await Task.Delay(800, Ct);
            Assert.Equal(0, announcer.Reloads);
            Assert.False(File.Exists(hups));

            // MASTER (within a down interval of its start: a first election): reloaded with the new set at once.
            await File.WriteAllTextAsync(master, "", Ct);
            await WaitAsync(() => announcer.State.Role == AnnouncerRole.Master && announcer.Reloads == 1, "MASTER, then one reload");
            Assert.Contains("198.18.0.100/32 dev eth0", await File.ReadAllTextAsync(options.ConfigPath, Ct));
            await WaitAsync(() => announcer.State.Vips.All(v => v.Announced), "every VIP held");
            Assert.Equal(first, announcer.Pid);   // a reload, not a restart
            Assert.Equal("0", (await File.ReadAllTextAsync(options.PriorityFilePath, Ct)).Trim()); // preemptible during the start window
            // After the start window the MASTER keeps the VIPs: 150 + 104 = 254.
            await WaitAsync(() => File.ReadAllText(options.PriorityFilePath).Trim() == "104", "the priority raised to 254");
            await WaitAsync(() => announcer.State.Detail.Contains("priority 254", StringComparison.Ordinal), "keepalived reported priority 254");

            // The same set again (in another order, with the management VIP): nothing to do.
            await announcer.AnnounceAsync([IPAddress.Parse("198.18.0.99"), IPAddress.Parse("198.18.0.100")], Ct);
            await Task.Delay(800, Ct);
            Assert.Equal(1, announcer.Reloads);
            Assert.Single(File.ReadAllLines(hups));

            // keepalived dies: FAULT at once, restarted after the backoff (1 s) with the same configuration, priority file reset.
            File.Delete(master);
            Assert.True(ProcessSignal.Send(first!.Value, ProcessSignal.Kill));
            await WaitAsync(() => announcer.State.Restarts == 1, "the crash noticed");
            await WaitAsync(() => announcer.State.Role == AnnouncerRole.Backup && announcer.Pid is { } p && p != first, "restarted");
            Assert.Contains("198.18.0.100/32 dev eth0", await File.ReadAllTextAsync(options.ConfigPath, Ct));
            Assert.Equal("0", (await File.ReadAllTextAsync(options.PriorityFilePath, Ct)).Trim());
            second = announcer.Pid!.Value;
            await File.WriteAllTextAsync(master, "", Ct);
            await WaitAsync(() => File.ReadAllText(options.PriorityFilePath).Trim() == "104", "MASTER again, then raised");

            // The daemon stops: keepalived keeps running. The next announcer adopts it: no restart, no reload,
            // its state learned from the priority probe; an adopted MASTER keeps the VIPs (254 at once).
            await announcer.StopAsync(Ct);
            Assert.Equal(AnnouncerRole.Stopped, announcer.State.Role);
            Assert.True(ProcessSignal.IsAlive(second.Value));
            Assert.True(File.Exists(options.FifoPath));
            var before = logs.Lines.Count;
            announcer = new KeepalivedAnnouncer(options, logs);
            await announcer.AnnounceAsync([IPAddress.Parse("198.18.0.100")], Ct);
            await announcer.StartAsync(Ct);
            Assert.True(announcer.Adopted);
            Assert.Equal(second, announcer.Pid);
            await WaitAsync(() => announcer.State.Role == AnnouncerRole.Master && File.ReadAllText(options.PriorityFilePath).Trim() == "104", "the adopted MASTER found and kept");
            // The log says what happened: an adoption of a MASTER, no election, no transition from INIT.
            var adoption = logs.Lines.Skip(before).ToList();
            Assert.Contains(adoption, l => l.Contains($"adopted running keepalived pid {second}, state MASTER", StringComparison.Ordinal));
            Assert.False(adoption.Any(l => l.Contains("MASTER because", StringComparison.Ordinal) || l.Contains("INIT ->", StringComparison.Ordinal)), string.Join('\n', adoption));
            Assert.All(announcer.State.Vips, v => Assert.True(v.Announced));
            await Task.Delay(600, Ct);
            Assert.Equal(0, announcer.Reloads);   // it holds the set it loaded
            Assert.Equal(0, announcer.State.Restarts);

            // Drained: FAULT through the priority file (the stand-in reports the change).
            await announcer.DrainAsync(true, Ct);
            Assert.Equal("-254", (await File.ReadAllTextAsync(options.PriorityFilePath, Ct)).Trim());

            await announcer.ReleaseAsync(Ct);
            Assert.Equal(AnnouncerRole.Stopped, announcer.State.Role);
            Assert.False(announcer.State.Healthy);
            Assert.False(ProcessSignal.IsAlive(second.Value) && !Merlin.Linux.ProgramRunner.IsZombie(second.Value), "the stand-in still runs");
            Assert.False(File.Exists(options.FifoPath));
        }
        finally
        {
            await announcer.ReleaseAsync(CancellationToken.None);
            if (second is { } pid && ProcessSignal.IsAlive(pid)) ProcessSignal.Send(pid, ProcessSignal.Kill);
        }
    }

    [Fact]
    public async Task Supervisor_MissingExecutable_ReportsFaultAndKeepsTrying()
    {
        using var dir = new TempDir("announcer");
        var options = KeepalivedConfigTests.Options() with { StateDir = dir.File("state"), Keepalived = dir.File("no-such-keepalived") };
        await using var announcer = new KeepalivedAnnouncer(options, NullLoggerFactory.Instance);

        await announcer.StartAsync(Ct);
        await WaitAsync(() => announcer.State.Role == AnnouncerRole.Fault, "FAULT");

        Assert.False(announcer.State.Healthy);
        Assert.Contains("could not start", announcer.State.Detail, StringComparison.Ordinal);
    }

    private ListLoggerFactory? _logs;

    private Task WaitAsync(Func<bool> condition, string what) =>
        Poll.UntilAsync(condition, what, TimeSpan.FromSeconds(15), () => _logs?.Text ?? "", ct: Ct);
}
