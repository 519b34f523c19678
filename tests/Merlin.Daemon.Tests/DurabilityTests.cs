using System.Collections.Concurrent;
using System.Diagnostics;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using Merlin.Testing;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// kill -9 under concurrent writers (issue 20): the merlin process is killed at a random moment while 16
/// writers take services through their life — create the service, create a server, change its weight, drain it,
/// and (every other service) delete the server and the service — restarted on the same store, and every service is
/// as its last acknowledged write left it, or as the one write in flight at the kill would have (never anything
/// else: no acknowledged write lost, none half-applied).
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
        var acknowledged = new ConcurrentDictionary<string, Outcome>();

        for (var round = 0; round < Kills; round++)
        {
            var port = LocalPorts.Free();
            using var daemon = StartMerlin([.. store, "--port", port.ToString(), "--health-port", LocalPorts.Free().ToString(), "--state-dir", dir.File("state")]);
            try
            {
                using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}");
                var client = new Wire.Merlin.MerlinClient(channel);
                await WaitUntilServingAsync(client, daemon);
                if (round > 0) AssertAsAcknowledged(await client.ListAsync(new Empty(), cancellationToken: Ct), acknowledged);

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
            var writes = acknowledged.Values.Sum(o => o.Writes);
            Assert.True(writes > Writers, $"only {writes} writes were acknowledged");
            var list = await client.ListAsync(new Empty(), cancellationToken: Ct);
            AssertAsAcknowledged(list, acknowledged);
            TestContext.Current.TestOutputHelper?.WriteLine($"{backend}: {Kills} kills, {writes} writes acknowledged over {acknowledged.Count} services " +
                $"({acknowledged.Values.Count(o => o.Acknowledged == Step.Deleted)} deleted, {acknowledged.Values.Count(o => o.InFlight is not null)} with a write in flight at a kill), none lost");
        }
        finally
        {
            final.Kill();
            await final.WaitForExitAsync(CancellationToken.None);
        }
    }

    /// <summary>Where a service's life got to: each step is one write.</summary>
    private enum Step { Created, ServerAdded, Reweighted, Drained, ServerDeleted, Deleted }

    /// <summary>The last step acknowledged, and the one in flight when the daemon was killed (it may or may not have been stored).</summary>
    private sealed record Outcome(Step Acknowledged, Step? InFlight, int Writes);

    private static void AssertAsAcknowledged(ListResponse list, IReadOnlyDictionary<string, Outcome> acknowledged)
    {
        var stored = list.Items.ToDictionary(i => i.Service.Id);
        var wrong = new List<string>();
        foreach (var (id, outcome) in acknowledged)
        {
            var seen = Observed(stored.GetValueOrDefault(id));
            if (seen != outcome.Acknowledged && seen != outcome.InFlight)
                wrong.Add($"{id}: stored as {seen?.ToString() ?? "unrecognisable"}, acknowledged {outcome.Acknowledged}{(outcome.InFlight is { } f ? $" (in flight: {f})" : "")}");
        }
        Assert.True(wrong.Count == 0, $"{wrong.Count} services not as acknowledged, e.g. {string.Join("; ", wrong.Take(5))}");
    }

    private static Step? Observed(ListResponse.Types.Item? item)
    {
        if (item is null) return Step.Deleted;
        if (item.Servers.Count == 0) return Step.Created; // or ServerDeleted: the same stored state
        if (item.Servers.Count != 1) return null;
        var server = item.Servers[0];
        return (server.Config.Weight, server.DrainDeadline is not null) switch
        {
            (5, false) => Step.ServerAdded,
            (7, false) => Step.Reweighted,
            (7, true) => Step.Drained,
            _ => null,
        };
    }

    /// <summary>Takes services through their life, one write at a time, until the daemon stops answering; records for
    /// each service the last write acknowledged and the one in flight at the end.</summary>
    private static async Task WriteUntilRefusedAsync(Wire.Merlin.MerlinClient client, int round, int writer, ConcurrentDictionary<string, Outcome> acknowledged)
    {
        for (var n = 0; ; n++)
        {
            var id = $"r{round}-w{writer}-{n}";
            var server = new RealServer.Types.Key { Ip = $"198.19.{100 + writer}.{n % 250 + 1}", Port = 80 };
            var steps = new List<(Step Step, Func<Task> Write)>
            {
                (Step.Created, () => client.CreateServiceAsync(new VirtualService
                {
                    Id = id,
                    Key = new() { Ip = $"198.{18 + round % 2}.{writer + 16 * (round / 2)}.{n % 250 + 1}", Port = (uint)(1000 + n / 250), Protocol = Protocol.Tcp },
                    Config = new() { Scheduler = "rr" },
                }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync),
                (Step.ServerAdded, () => client.CreateServerAsync(new RealServer { ServiceID = id, Key = server, Config = new() { Weight = 5, Forward = ForwardMethod.Route } }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync),
                (Step.Reweighted, () => client.UpdateServerAsync(new RealServer { ServiceID = id, Key = server, Config = new() { Weight = 7 } }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync),
                (Step.Drained, () => client.DrainServerAsync(new DrainRequest { Server = new RealServer { ServiceID = id, Key = server }, Period = Duration.FromTimeSpan(TimeSpan.FromHours(1)) }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync),
            };
            if (n % 2 == 0)
            {
                steps.Add((Step.ServerDeleted, () => client.DeleteServerAsync(new RealServer { ServiceID = id, Key = server }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync));
                steps.Add((Step.Deleted, () => client.DeleteServiceAsync(new StringValue { Value = id }, deadline: Deadline(), cancellationToken: Ct).ResponseAsync));
            }
            var writes = 0;
            foreach (var (step, write) in steps)
            {
                try
                {
                    await write();
                    writes++;
                    acknowledged[id] = new Outcome(step == Step.ServerDeleted ? Step.Created : step, null, writes);
                }
                catch (RpcException)
                {
                    // Killed: this write may or may not have been stored, but it was not acknowledged.
                    if (writes > 0) acknowledged[id] = acknowledged[id] with { InFlight = step == Step.ServerDeleted ? Step.Created : step };
                    return;
                }
            }
        }
        static DateTime Deadline() => DateTime.UtcNow.AddSeconds(10);
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
