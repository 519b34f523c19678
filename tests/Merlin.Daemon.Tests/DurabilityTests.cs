using System.Collections.Concurrent;
using System.Diagnostics;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using Merlin.Testing;
using Merlin.Wire;

namespace Merlin.Daemon.Tests;

/// <summary>
/// kill -9 under concurrent writers (issue 20): the merlin process is killed at a random moment while 16
/// writers create services, restarted on the same store, and every create it acknowledged is there.
/// </summary>
public class DurabilityTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    private const int Writers = 16;
    private const int Kills = 3;
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory, MemberData(nameof(Backends))]
    public async Task KillMinus9UnderConcurrentWriters_EveryAcknowledgedWriteSurvivesTheRestart(string backend)
    {
        using var dir = new TempDir("durability");
        string[] store = backend == "sqlite"
            ? ["--store-backend", "sqlite", "--store-path", dir.File("merlin.db")]
            : ["--store-backend", "etcd3", "--store-endpoints", Etcd.Server.Endpoint, "--store-prefix", Prefix];
        var random = new Random(20);
        var acknowledged = new ConcurrentBag<string>();

        for (var round = 0; round < Kills; round++)
        {
            var port = LocalPorts.Free();
            using var daemon = StartMerlin([.. store, "--port", port.ToString(), "--health-port", LocalPorts.Free().ToString(), "--state-dir", dir.File("state")]);
            try
            {
                using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}");
                var client = new Wire.Merlin.MerlinClient(channel);
                await WaitUntilServingAsync(client, daemon);
                if (round > 0) AssertAllPresent(await client.ListAsync(new Empty(), cancellationToken: Ct), acknowledged);

                var writers = Enumerable.Range(0, Writers).Select(w => WriteUntilRefusedAsync(client, round, w, acknowledged)).ToArray();
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(300, 1500)), Ct);
                daemon.Kill(); // SIGKILL to this PID
                await daemon.WaitForExitAsync(Ct);
                await Task.WhenAll(writers);
            }
            finally
            {
                if (!daemon.HasExited) daemon.Kill();
            }
        }

        var last = LocalPorts.Free();
        using var final = StartMerlin([.. store, "--port", last.ToString(), "--health-port", LocalPorts.Free().ToString(), "--state-dir", dir.File("state")]);
        try
        {
            using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{last}");
            var client = new Wire.Merlin.MerlinClient(channel);
            await WaitUntilServingAsync(client, final);
            Assert.True(acknowledged.Count > Writers, $"only {acknowledged.Count} writes were acknowledged");
            var list = await client.ListAsync(new Empty(), cancellationToken: Ct);
            AssertAllPresent(list, acknowledged);
            TestContext.Current.TestOutputHelper?.WriteLine($"{backend}: {Kills} kills, {acknowledged.Count} creates acknowledged, {list.Items.Count} stored, none lost");
        }
        finally
        {
            final.Kill();
            await final.WaitForExitAsync(CancellationToken.None);
        }
    }

    private static void AssertAllPresent(ListResponse list, IEnumerable<string> acknowledged)
    {
        var stored = list.Items.Select(i => i.Service.Id).ToHashSet();
        var lost = acknowledged.Where(id => !stored.Contains(id)).ToList();
        Assert.True(lost.Count == 0, $"{lost.Count} acknowledged creates lost, e.g. {string.Join(", ", lost.Take(5))}");
    }

    /// <summary>Creates services one after another until the daemon stops answering; records each one acknowledged.</summary>
    private static async Task WriteUntilRefusedAsync(Wire.Merlin.MerlinClient client, int round, int writer, ConcurrentBag<string> acknowledged)
    {
        for (var n = 0; ; n++)
        {
            var id = $"r{round}-w{writer}-{n}";
            try
            {
                await client.CreateServiceAsync(new VirtualService
                {
                    Id = id,
                    Key = new() { Ip = $"198.{18 + round}.{writer}.{n % 250 + 1}", Port = (uint)(1000 + n / 250), Protocol = Protocol.Tcp },
                    Config = new() { Scheduler = "rr" },
                }, deadline: DateTime.UtcNow.AddSeconds(10), cancellationToken: Ct);
                acknowledged.Add(id);
            }
            catch (RpcException)
            {
                return; // killed: this write may or may not have been stored, but it was not acknowledged
            }
        }
    }

    private static Process StartMerlin(string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "merlin.dll"));
        foreach (var arg in args) start.ArgumentList.Add(arg);
        start.ArgumentList.Add("--log-level");
        start.ArgumentList.Add("warning");
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("MERLIN_", StringComparison.Ordinal)).ToList()) start.Environment.Remove(key);
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static async Task WaitUntilServingAsync(Wire.Merlin.MerlinClient client, Process daemon)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            Assert.False(daemon.HasExited, $"merlin exited with {(daemon.HasExited ? daemon.ExitCode : 0)} before serving");
            try
            {
                await client.StatusAsync(new Empty(), deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: Ct);
                return;
            }
            catch (RpcException) when (clock.Elapsed < TimeSpan.FromSeconds(60))
            {
                await Task.Delay(100, Ct);
            }
        }
    }
}
