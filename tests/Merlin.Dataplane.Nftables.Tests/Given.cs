using System.Net;
using System.Net.NetworkInformation;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>Small builders for services, servers and layouts, with addresses from 198.18.0.0/15 and 2001:db8::/32.</summary>
internal static class Given
{
    public const uint Seed = 0x5eed1234;
    public static readonly PhysicalAddress OwnMac = PhysicalAddress.Parse("02-00-00-00-00-AA");

    public static NftablesOptions Options(string? iface = "eth0") => new()
    {
        HashSeed = Seed,
        Interface = iface,
        OwnMac = iface is null ? null : OwnMac,
        ResolveWait = TimeSpan.Zero,
    };

    public static ServiceKey Tcp(string address, ushort port) => ServiceKey.ForAddress(IPAddress.Parse(address), port, Protocol.Tcp);

    public static ServiceKey Udp(string address, ushort port) => ServiceKey.ForAddress(IPAddress.Parse(address), port, Protocol.Udp);

    public static ServiceConfig Config(string scheduler = "wrr", SchedulerFlags flags = SchedulerFlags.None, uint persistence = 0, bool onePacket = false) =>
        new() { Scheduler = scheduler, Flags = flags, PersistenceTimeout = persistence, OnePacket = onePacket };

    public static (RealServerKey, RealServerConfig) Route(string address, ushort port, uint weight = 1) =>
        (new RealServerKey(IPAddress.Parse(address), port), new RealServerConfig { Weight = weight, Forward = ForwardMethod.Route });

    public static (RealServerKey, RealServerConfig) Masq(string address, ushort port, uint weight = 1) =>
        (new RealServerKey(IPAddress.Parse(address), port), new RealServerConfig { Weight = weight, Forward = ForwardMethod.Masq });

    public static ServiceState Service(ServiceKey key, ServiceConfig config, params (RealServerKey, RealServerConfig)[] servers) =>
        new(key, config, servers.ToDictionary(s => s.Item1, s => s.Item2));

    public static ServiceState Service(ServiceKey key, params (RealServerKey, RealServerConfig)[] servers) => Service(key, Config(), servers);

    public static Dictionary<ServiceKey, ServiceState> State(params ServiceState[] services) => services.ToDictionary(s => s.Key);

    /// <summary>A MAC made from the address, so tests can predict it: 198.18.1.11 → 02:00:c6:12:01:0b.</summary>
    public static PhysicalAddress MacOf(IPAddress address)
    {
        var b = address.GetAddressBytes();
        return new PhysicalAddress([0x02, 0x00, b[^4], b[^3], b[^2], b[^1]]);
    }

    public static Dictionary<IPAddress, PhysicalAddress> MacsFor(IEnumerable<ServiceState> services) =>
        services.SelectMany(s => s.Servers.Keys).Select(k => k.Address).Distinct().ToDictionary(a => a, MacOf);

    // The build cache each layout built here was made with: a build after it continues with the same cache, as the
    // dataplane's builds do, unless a test passes its own.
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Assignment, BuildCache> CacheOf = new();

    /// <summary>
    /// A layout build. After <paramref name="previous"/> (a layout built here), with that build's cache unless
    /// <paramref name="cache"/> is given; without <paramref name="previous"/>, from scratch.
    /// </summary>
    public static Layout.Layout Build(IReadOnlyDictionary<ServiceKey, ServiceState> services, Assignment? previous = null,
        NftablesOptions? options = null, IReadOnlyDictionary<IPAddress, PhysicalAddress>? macs = null, BuildCache? cache = null)
    {
        options ??= Options();
        cache ??= previous is not null && CacheOf.TryGetValue(previous, out var had) ? had : new BuildCache();
        macs ??= MacsFor(services.Values);
        var layout = LayoutBuilder.Build(new LayoutInput(services, macs, options.OwnMac, previous ?? Assignment.Empty) { MacsVersion = VersionOf(macs) }, options, cache);
        CacheOf.AddOrUpdate(layout.Assignment, cache);
        return layout;
    }

    /// <summary>What the neighbour tracker's version says for a dictionary changed in place: here, one number per content.</summary>
    public static long VersionOf(IReadOnlyDictionary<IPAddress, PhysicalAddress> macs)
    {
        var hash = new HashCode();
        foreach (var (address, mac) in macs.OrderBy(kv => kv.Key.ToString(), StringComparer.Ordinal)) { hash.Add(address); hash.Add(mac.ToString()); }
        return (long)hash.ToHashCode() << 32 | (uint)macs.Count;
    }
}
