using System.Net;
using System.Net.Sockets;
using Merlin.Dataplane.Abstractions;
using Merlin.Reconciler;
using Merlin.Store.Sqlite;
using Merlin.Store.Tests;
using Merlin.Testing;
using Microsoft.Extensions.DependencyInjection;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// How the merlin process ends when it cannot start: one line naming the flag, exit code 2 (docs/operations.md, "Start-up
/// order and exit codes"), no stack trace, and nothing done to the kernel or the store before it gave up.
/// </summary>
public sealed class StartupTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private readonly TempDir _dir = new("startup");

    private Task<(int Code, string Out, string Err)> MerlinAsync(params string[] args) =>
        MerlinProcess.RunAsync(Limit, [.. MerlinProcess.Contained(_dir.Path), .. args]);

    private static void OneLine(string expectedStart, string stderr)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, stderr);
        Assert.StartsWith(expectedStart, lines[0]);
    }

    [Fact]
    public async Task Version_PrintsTheReleaseAndCommit_TheSameAsMeradm()
    {
        var (code, stdout, stderr) = await MerlinProcess.RunAsync(Limit, "--version");
        var meradmOut = new StringWriter();
        var meradmCode = await Merlin.Cli.MeradmApp.RunAsync(["--version"], meradmOut, new StringWriter(), ct: TestContext.Current.CancellationToken);

        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        // Directory.Build.props' Version, then the commit the SDK appends: one release string for every program.
        Assert.Matches(@"^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?(\+[0-9a-f]{7,40})?$", stdout.Trim());
        Assert.Equal(0, meradmCode);
        Assert.Equal(stdout.Trim(), meradmOut.ToString().Trim());
    }

    [Fact]
    public async Task StateDirIsAFile_ExitsWith2_NamingTheFlag()
    {
        var file = _dir.File("state-file");
        File.WriteAllText(file, "not a directory");

        var (code, _, err) = await MerlinAsync("--state-dir", file);

        Assert.Equal(2, code);
        Assert.Equal($"merlin: --state-dir: {file} is a file, not a directory", err.Trim());
    }

    [Fact]
    public async Task StorePathIsADirectory_ExitsWith2_NamingTheFlag()
    {
        var (code, _, err) = await MerlinAsync("--store-path", _dir.Path);

        Assert.Equal(2, code);
        OneLine($"merlin: --store-path: {_dir.Path} is a directory", err);
    }

    [Fact]
    public async Task StorePathUnderAFile_ExitsWith2_NamingTheFlag()
    {
        var file = _dir.File("a-file");
        File.WriteAllText(file, "");

        var (code, _, err) = await MerlinAsync("--store-path", Path.Combine(file, "merlin.db"));

        Assert.Equal(2, code);
        OneLine($"merlin: --store-path: {file}/merlin.db cannot be made: {file} is a file", err);
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("truncated")]
    public async Task StoreFileNotAUsableSqliteStore_ExitsWith2_SaysWhatToDo_AndLeavesTheFileAsItWas(string kind)
    {
        var path = _dir.File("merlin.db");
        if (kind == "garbage")
        {
            File.WriteAllBytes(path, [.. Enumerable.Range(0, 8192).Select(i => (byte)(i * 7))]);
        }
        else
        {
            await using (var store = new SqliteStore(path))
            {
                for (var i = 0; i < 50; i++)
                    await store.CreateServiceAsync(new Wire.VirtualService
                    {
                        Id = $"svc{i}", Key = new() { Ip = $"198.18.0.{i + 1}", Port = 80, Protocol = Wire.Protocol.Tcp }, Config = new() { Scheduler = "rr" },
                    }, TestContext.Current.CancellationToken);
            }
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            foreach (var side in new[] { "-wal", "-shm" }) File.Delete(path + side);
            var bytes = File.ReadAllBytes(path);
            File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        }
        var before = File.ReadAllBytes(path);

        var (code, _, err) = await MerlinAsync("--store-path", path);

        Assert.Equal(2, code);
        OneLine($"merlin: --store-path: {path} is not a usable merlin store", err);
        Assert.Contains("it was not changed", err);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public async Task ConfigIsNotJson_ExitsWith2_NamingTheFlag()
    {
        var config = _dir.File("merlin.json");
        File.WriteAllText(config, "{ \"port\": 4282, ");

        var (code, _, err) = await MerlinAsync("--config", config);

        Assert.Equal(2, code);
        OneLine($"merlin: --config: {config} is not valid JSON", err);
    }

    [Fact]
    public async Task ApiPortInUse_ExitsWith2_NamingTheFlag()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;

        var (code, _, err) = await MerlinAsync("--port", port.ToString());

        Assert.Equal(2, code);
        OneLine($"merlin: --port: 127.0.0.1:{port} is in use", err);
    }

    [Fact]
    public async Task ApiPortInUse_TheReconcilerNeverRuns_SoTheDataplaneIsNotTouched()
    {
        var db = _dir.File("merlin.db");
        await using (var store = new SqliteStore(db))
        {
            await store.CreateServiceAsync(new Wire.VirtualService
            {
                Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Wire.Protocol.Tcp }, Config = new() { Scheduler = "rr" },
            }, TestContext.Current.CancellationToken);
        }
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var options = new DaemonOptions
        {
            Port = ((IPEndPoint)taken.LocalEndpoint).Port, HealthPort = LocalPorts.Free(),
            StoreBackend = "sqlite", StorePath = db, StateDir = _dir.File("state"),
        };

        await using var app = DaemonHost.Build(options);
        await Assert.ThrowsAnyAsync<IOException>(() => app.StartAsync(TestContext.Current.CancellationToken));
        await Task.Delay(500, TestContext.Current.CancellationToken); // time for a pass, were one started
        await app.StopAsync(CancellationToken.None);

        Assert.Equal(0, app.Services.GetRequiredService<ReconcileLoop>().Passes);
        Assert.Empty(((InMemoryDataplane)app.Services.GetRequiredService<IDataplane>()).State.Services);
    }

    [Fact]
    public async Task SecondDaemonOnTheSameStateDir_ExitsWith2_NamingTheFirstOnesPid_AndStartsOnceItIsGone()
    {
        var state = _dir.File("state");
        await using (var first = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("first.db"), StateDir = state }))
        {
            var (code, _, err) = await MerlinAsync("--state-dir", state, "--store-path", _dir.File("second.db"));

            Assert.Equal(2, code);
            Assert.Equal($"merlin: --state-dir: {state} is in use by another merlin (PID {Environment.ProcessId}); one daemon per node and state directory " +
                         "(give a second daemon its own --state-dir, ports and store)", err.Trim());
            Assert.False(File.Exists(_dir.File("second.db")), "the second daemon opened its store");
        }

        await using var again = await RunningDaemon.StartAsync(o => o with { StoreBackend = "sqlite", StorePath = _dir.File("first.db"), StateDir = state });
    }

    public void Dispose() => _dir.Dispose();
}
