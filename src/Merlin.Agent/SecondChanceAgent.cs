using System.Net;
using System.Text.Json;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Hashing;
using Merlin.Contracts;
using Microsoft.Extensions.Logging;
using Endpoints = Merlin.Model.Endpoints;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

namespace Merlin.Agent;

/// <summary>Where second-chance rules are written: an nft script runner and its counters (the kernel, or a test double).</summary>
public interface ISecondChanceKernel
{
    Task RunAsync(string script, CancellationToken ct);

    /// <summary><c>nft -j list counters table &lt;family&gt; merlin_chance</c>; null if the table does not exist.</summary>
    Task<string?> ListCountersJsonAsync(string family, CancellationToken ct);
}

/// <summary>What second chance needs besides the API: the load balancers' hash seed and how often to re-read the tables.</summary>
public sealed record SecondChanceOptions(uint HashSeed)
{
    public TimeSpan Period { get; init; } = TimeSpan.FromSeconds(2);
}

/// <summary>
/// Keeps this real server's second-chance rules (<see cref="SecondChanceRules"/>) equal to the stored records of
/// its md-table services: reads each through the API (GetTable) every <see cref="SecondChanceOptions.Period"/>,
/// and replaces the table in one transaction when the rules it would write changed. Removes the table when it
/// stops. Services without a stored table (not md-table) get no rules.
/// </summary>
public sealed partial class SecondChanceAgent(MerlinClient api, ISecondChanceKernel kernel, AgentOptions agent, SecondChanceOptions options, TimeProvider time, ILogger<SecondChanceAgent> log)
{
    private string? _applied;
    private readonly Dictionary<string, string> _names = [];

    /// <summary>Hand-offs per service and kind (<see cref="SecondChanceRules.CounterKinds"/>), as last read from the kernel.</summary>
    public IReadOnlyDictionary<(string Service, string Kind), ulong> Counters { get; private set; } = new Dictionary<(string, string), ulong>();

    /// <summary>
    /// The hash of each service's table the rules were last written from, as <c>meradm list</c> and <c>meradm status</c>
    /// show it: what an operator compares with the load balancers'.
    /// </summary>
    public IReadOnlyDictionary<string, string> TableHashes { get; private set; } = new Dictionary<string, string>();

    /// <summary>Syncs until <paramref name="ct"/>, then removes the rules.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    await SyncAsync(ct);
                    await ReadCountersAsync(ct);
                }
                catch (Exception e) when (!ct.IsCancellationRequested && e is RpcException or InvalidOperationException or TableFormatException or IOException)
                {
                    LogSyncFailed(e.Message);
                }
                await Task.Delay(options.Period, time, ct);
            }
        }
        catch (Exception e) when (ct.IsCancellationRequested && e is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled })
        {
            // Stopped: the node has detached.
        }
        await RemoveAsync();
    }

    /// <summary>
    /// One pass: read the records, write the rules if they changed. Returns whether it wrote. Each service is one
    /// GetTable call (the table and the service), so a pass costs this agent's services, not the whole store; a
    /// server older than GetTable's service field is asked for a List once per pass instead.
    /// </summary>
    public async Task<bool> SyncAsync(CancellationToken ct)
    {
        var services = new List<SecondChanceService>();
        var hashes = new Dictionary<string, string>();
        ListResponse? list = null;
        _names.Clear();
        foreach (var id in agent.Services)
        {
            ServiceTable stored;
            try
            {
                stored = await api.GetTableAsync(new StringValue { Value = id }, Call(ct));
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
            {
                continue; // gone: no rules for it
            }
            var service = stored.Service;
            if (service is null)
            {
                list ??= await api.ListAsync(new Empty(), Call(ct));
                service = list.Items.FirstOrDefault(i => i.Service?.Id == id)?.Service;
            }
            if (service?.Key is not { } key || !IPAddress.TryParse(key.Ip, out var vip) || key.Protocol != Protocol.Tcp) continue;
            var own = agent.Addresses.FirstOrDefault(a => a.AddressFamily == vip.AddressFamily);
            if (own is null) continue;
            if (stored.Table.IsEmpty) continue;
            var record = TableRecord.Decode(stored.Table.Span);
            if (WireMapper.TryToModel(service, out var model) is not null) continue;
            // As the load balancers hash (LayoutBuilder): the source address alone for persistence, or mh without mh-port.
            bool sourceOnly = model!.Config.PersistenceTimeout > 0 || !model.Config.Flags.HasFlag(Merlin.Model.SchedulerFlags.Flag2);
            services.Add(new SecondChanceService(id, vip, (ushort)key.Port, sourceOnly, Endpoints.Format(own, (ushort)key.Port), record));
            hashes[id] = record.Current.HashText;
            _names[$"{services.Count - 1}"] = id;
        }
        TableHashes = hashes;
        var script = SecondChanceRules.Render(services, options.HashSeed);
        if (script == _applied) return false;
        await kernel.RunAsync(script, ct);
        _applied = script;
        LogRulesWritten(services.Count, services.Sum(s => SecondChanceRules.PreviousOwners(s).Count()), string.Join(", ", hashes.Select(h => $"{h.Key} {h.Value}")));
        return true;
    }

    private async Task ReadCountersAsync(CancellationToken ct)
    {
        var counters = new Dictionary<(string, string), ulong>();
        foreach (var family in SecondChanceRules.Families)
        {
            if (await kernel.ListCountersJsonAsync(family, ct) is not { } json) continue;
            using var doc = JsonDocument.Parse(json);
            foreach (var item in doc.RootElement.GetProperty("nftables").EnumerateArray())
            {
                if (!item.TryGetProperty("counter", out var counter)) continue;
                var name = counter.GetProperty("name").GetString() ?? "";
                var cut = name.LastIndexOf('_');
                if (cut < 0 || !_names.TryGetValue(name[(cut + 1)..], out var service)) continue;
                counters[(service, name[..cut])] = counter.GetProperty("packets").GetUInt64();
            }
        }
        Counters = counters;
    }

    private async Task RemoveAsync()
    {
        if (_applied is null) return;
        try
        {
            await kernel.RunAsync(SecondChanceRules.Removal, CancellationToken.None);
            _applied = null;
            LogRemoved();
        }
        catch (InvalidOperationException e)
        {
            LogRemoveFailed(e.Message);
        }
    }

    private CallOptions Call(CancellationToken ct) => new(agent.Headers, time.GetUtcNow().UtcDateTime + agent.CallTimeout, ct);

    [LoggerMessage(EventId = 20, Level = LogLevel.Information, Message = "Second chance: rules written for {Count} md-table service(s), {Slots} slot(s) with another previous owner; tables {Hashes}")]
    private partial void LogRulesWritten(int count, int slots, string hashes);

    [LoggerMessage(EventId = 21, Level = LogLevel.Warning, Message = "Second chance: could not update the rules, keeping the ones in place: {Error}")]
    private partial void LogSyncFailed(string error);

    [LoggerMessage(EventId = 22, Level = LogLevel.Information, Message = "Second chance: rules removed")]
    private partial void LogRemoved();

    [LoggerMessage(EventId = 23, Level = LogLevel.Error, Message = "Second chance: could not remove tables ip and ip6 merlin_chance: {Error}")]
    private partial void LogRemoveFailed(string error);
}

/// <summary>The kernel's nftables through the dataplane's writer (libnftables in the process).</summary>
public sealed class NftablesSecondChanceKernel(Merlin.Dataplane.Nftables.NftablesScripts nft) : ISecondChanceKernel
{
    public Task RunAsync(string script, CancellationToken ct) => nft.RunAsync(script, ct);

    public Task<string?> ListCountersJsonAsync(string family, CancellationToken ct) => nft.ListCountersJsonAsync(family, SecondChanceRules.Table, ct);
}
