using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables.Neighbours;

/// <summary>
/// The MACs DSR needs: the interface's own and each DSR real server's, from the neighbour table. It
/// asks the kernel to keep the servers' entries resolved while a service uses them, and forgets them
/// after. The planner does not know MACs; the layout is built from <see cref="Macs"/>.
/// </summary>
internal sealed partial class NeighbourTracker(NftablesOptions options, INeighbours neighbours, ILogger logger, TimeProvider time)
{
    private readonly Dictionary<IPAddress, PhysicalAddress> _macs = new();
    private readonly HashSet<IPAddress> _tracked = new();
    private readonly Dictionary<IPAddress, long> _waitedFor = new();

    /// <summary>The last MAC known of each DSR real server (a server that stops answering keeps it).</summary>
    public IReadOnlyDictionary<IPAddress, PhysicalAddress> Macs => _macs;

    /// <summary>Goes up whenever <see cref="Macs"/> changes (it is one dictionary, changed in place): a build may trust what it saw at the same version.</summary>
    public long Version { get; private set; }

    private void Put(IPAddress address, PhysicalAddress mac)
    {
        if (_macs.TryGetValue(address, out var known) && known.Equals(mac)) return;
        _macs[address] = mac;
        Version++;
    }

    /// <summary>The interface's MAC: from the options, else read from the interface; null while unknown.</summary>
    public PhysicalAddress? OwnMac { get; private set; } = options.OwnMac;

    /// <summary>Takes the MACs a previous run recorded in the kernel's state records.</summary>
    public void Adopt(IReadOnlyDictionary<IPAddress, PhysicalAddress> macs)
    {
        foreach (var (address, mac) in macs) Put(address, mac);
    }

    public async Task ReadOwnMacAsync(CancellationToken ct)
    {
        if (options.OwnMac is not null || options.Interface is null) return;
        // A failed read keeps the MAC we knew: a hiccup of the kernel read must not take DSR down.
        OwnMac = await neighbours.LinkAddressAsync(options.Interface, ct) ?? OwnMac;
    }

    /// <summary>Follows the interface's MAC and the MACs of <paramref name="addresses"/>; true if one changed (the layout must be built again).</summary>
    public async Task<bool> RefreshAsync(IReadOnlyList<IPAddress> addresses, CancellationToken ct)
    {
        if (options.Interface is not { } device) return false;
        var own = OwnMac;
        await ReadOwnMacAsync(ct);
        bool changed = !Equals(own, OwnMac);
        if (addresses.Count > 0)
        {
            await TrackAsync(addresses, device, ct);
            var entries = await neighbours.ReadAsync(device, ct);
            foreach (var address in addresses)
            {
                if (!entries.TryGetValue(address, out var mac)) continue;   // keep the last MAC we knew
                if (_macs.TryGetValue(address, out var known) && known.Equals(mac)) continue;
                if (_macs.ContainsKey(address)) LogMacChanged(address, _macs[address], mac);
                Put(address, mac);
                changed = true;
            }
        }
        return changed;
    }

    /// <summary>
    /// Starts the resolution of a layout's DSR addresses and waits a little for the unknown ones
    /// (<see cref="NftablesOptions.ResolveWait"/>, once per address a minute, so a server that does
    /// not answer does not slow every apply down).
    /// </summary>
    public async Task ResolveAsync(IReadOnlyList<IPAddress> addresses, IReadOnlyList<IPAddress> unresolved, CancellationToken ct)
    {
        if (options.Interface is not { } device) return;
        await TrackAsync(addresses, device, ct);
        var now = time.GetTimestamp();
        var wait = unresolved.Where(a => !_waitedFor.TryGetValue(a, out var t) || time.GetElapsedTime(t, now) > TimeSpan.FromMinutes(1)).ToList();
        foreach (var a in wait) _waitedFor[a] = now;
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var entries = await neighbours.ReadAsync(device, ct);
            foreach (var a in addresses)
                if (entries.TryGetValue(a, out var mac)) Put(a, mac);
            if (wait.All(_macs.ContainsKey) || deadline.Elapsed >= options.ResolveWait) return;
            await Task.Delay(TimeSpan.FromMilliseconds(50), time, ct);
        }
    }

    /// <summary>Drops the managed neighbour entries of addresses no DSR service uses any more.</summary>
    public async Task ForgetAllButAsync(IReadOnlyList<IPAddress> inUse, CancellationToken ct)
    {
        if (options.Interface is not { } device) return;
        var gone = _tracked.Except(inUse).ToList();
        if (gone.Count == 0) return;
        try { await neighbours.UntrackAsync(gone, device, ct); }
        catch (IOException e) { LogTrackFailed(e.Message); }
        _tracked.ExceptWith(gone);
        foreach (var a in gone)
            if (_macs.Remove(a)) Version++;
    }

    private async Task TrackAsync(IReadOnlyList<IPAddress> addresses, string device, CancellationToken ct)
    {
        var fresh = addresses.Where(a => !_tracked.Contains(a)).ToList();
        if (fresh.Count == 0) return;
        try
        {
            await neighbours.TrackAsync(fresh, device, ct);
            _tracked.UnionWith(fresh);
        }
        catch (IOException e)
        {
            LogTrackFailed(e.Message);
        }
    }

    [LoggerMessage(EventId = 411, Level = LogLevel.Information, Message = "nftables: MAC of {Address} changed from {Old} to {New}")]
    private partial void LogMacChanged(IPAddress address, PhysicalAddress old, PhysicalAddress @new);

    [LoggerMessage(EventId = 412, Level = LogLevel.Warning, Message = "nftables: neighbour resolution could not be started: {Reason}")]
    private partial void LogTrackFailed(string reason);
}
