using System.Diagnostics;
using System.Net;
using Merlin.Announcer.Vrrp;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Announcer.Tests;

/// <summary>
/// The supervisor against a stand-in for keepalived (a shell script that takes keepalived's flags, writes
/// its pid file and FIFO lines, answers SIGHUP with MASTER and SIGTERM with STOP): start, reload only on a
/// change, restart after a crash, stop by PID. No root or keepalived needed; VrrpLabTests runs the real one.
/// </summary>
public class KeepalivedAnnouncerTests
{
    private const string FakeKeepalived = """
        #!/bin/sh
        while [ $# -gt 0 ]; do case "$1" in -f) conf=$2; shift;; -p) pidfile=$2; shift;; esac; shift; done
        fifo=$(awk '/notify_fifo/ {print $2}' "$conf")
        echo $$ > "$pidfile"
        echo "fake keepalived $$ read $conf"
        trap 'echo hup >> "$conf.hups"; echo "INSTANCE \"merlin_51\" MASTER 150" > "$fifo"' HUP
        trap 'echo "INSTANCE \"merlin_51\" STOP 150" > "$fifo"; rm -f "$pidfile"; exit 0' TERM
        echo "INSTANCE \"merlin_51\" BACKUP 150" > "$fifo"
        i=0
        while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
        """;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Supervisor_StartsReloadsOnlyOnChange_RestartsAfterACrash_AndStopsByPid()
    {
        using var dir = new TempDir("announcer");
        var fake = dir.File("keepalived");
        await File.WriteAllTextAsync(fake, FakeKeepalived.ReplaceLineEndings("\n") + "\n", Ct);
        if (!OperatingSystem.IsLinux()) { Assert.Skip("keepalived runs on Linux"); return; }
        File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var options = KeepalivedConfigTests.Options() with { StateDir = dir.File("state"), Keepalived = fake };
        await using var announcer = new KeepalivedAnnouncer(options, NullLoggerFactory.Instance);

        await announcer.StartAsync(Ct);
        await WaitAsync(() => announcer.State.Role == AnnouncerRole.Backup, "BACKUP after start");
        var first = announcer.Pid;
        Assert.NotNull(first);
        Assert.True(announcer.State.Healthy);
        Assert.Equal([(IPAddress.Parse("198.18.0.99"), false, true)], announcer.State.Vips.Select(v => (v.Address, v.Announced, v.Management)));

        await announcer.AnnounceAsync([IPAddress.Parse("198.18.0.100")], Ct);
        await WaitAsync(() => announcer.State.Role == AnnouncerRole.Master, "MASTER after the SIGHUP");
        Assert.Equal(1, announcer.Reloads);
        Assert.Contains("198.18.0.100/32 dev eth0", await File.ReadAllTextAsync(options.ConfigPath, Ct));
        Assert.All(announcer.State.Vips, v => Assert.True(v.Announced));
        Assert.Equal(first, announcer.Pid);   // a reload, not a restart

        // The same set again (in another order, with the management VIP): nothing to do.
        await announcer.AnnounceAsync([IPAddress.Parse("198.18.0.99"), IPAddress.Parse("198.18.0.100")], Ct);
        await Task.Delay(800, Ct);
        Assert.Equal(1, announcer.Reloads);
        Assert.Single(File.ReadAllLines(options.ConfigPath + ".hups"));

        // keepalived dies: FAULT at once, restarted after the backoff (1 s) with the same configuration.
        Assert.True(Native.Signal(first!.Value, Native.SigKill));
        await WaitAsync(() => announcer.State.Restarts == 1, "the crash noticed");
        await WaitAsync(() => announcer.State.Role == AnnouncerRole.Backup && announcer.Pid is { } p && p != first, "restarted");
        Assert.Contains("198.18.0.100/32 dev eth0", await File.ReadAllTextAsync(options.ConfigPath, Ct));
        var second = announcer.Pid!.Value;

        await announcer.StopAsync(Ct);
        Assert.Equal(AnnouncerRole.Stopped, announcer.State.Role);
        Assert.False(announcer.State.Healthy);
        Assert.False(Native.IsAlive(second) && !File.ReadAllText($"/proc/{second}/stat").Contains(" Z ", StringComparison.Ordinal), "the stand-in still runs");
        Assert.False(File.Exists(options.FifoPath));
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

    private static async Task WaitAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(15)) Assert.Fail($"timed out waiting for {what}");
            await Task.Delay(20, Ct);
        }
    }
}
