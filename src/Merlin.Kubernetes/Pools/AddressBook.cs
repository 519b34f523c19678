using System.Net;

namespace Merlin.Kubernetes.Pools;

/// <summary>A Service port as sharing sees it: two Services may share an address only on different ones.</summary>
public readonly record struct PortKey(string Protocol, int Port)
{
    public override string ToString() => $"{Protocol}/{Port}";
}

/// <summary>Who holds addresses: a Service (<c>namespace/name</c>), its sharing key and ports. A foreign holder is a
/// Service of another load-balancer class: its addresses are never shared or handed out.
/// A pinned holder keeps addresses it holds while its request finds no new ones: nobody may join it there, but
/// those who hold the address with it keep it.</summary>
public sealed record Holder(string Service, string? SharingKey, IReadOnlySet<PortKey> Ports, bool Foreign = false, bool Pinned = false)
{
    /// <summary>Whether this holder and another may hold the same address at once.</summary>
    public string? ClashWith(Holder other)
    {
        if (other.Service == Service) return null;
        if (Foreign || other.Foreign) return $"held by {other.Service}, a Service of another load-balancer class";
        if (SharingKey is null || other.SharingKey != SharingKey)
            return $"held by {other.Service}" + (other.SharingKey is null ? "" : " (with another sharing key)");
        var clash = Ports.FirstOrDefault(other.Ports.Contains);
        return clash == default ? null : $"shared with {other.Service}, which already uses {clash}";
    }
}

/// <summary>The allocation map: which Service holds which address. It is rebuilt from every Service's status before
/// anything is allocated, and kept in step with each allocation, so no address is ever given to two Services that may
/// not share it.</summary>
public sealed class AddressBook
{
    private readonly Dictionary<IPAddress, List<Holder>> _byAddress = [];
    private readonly Dictionary<string, (Holder Holder, IReadOnlyList<IPAddress> Addresses)> _byService = new(StringComparer.Ordinal);

    public IReadOnlyList<IPAddress> AddressesOf(string service) =>
        _byService.TryGetValue(service, out var e) ? e.Addresses : [];

    public IReadOnlyList<Holder> HoldersOf(IPAddress address) =>
        _byAddress.TryGetValue(address, out var list) ? list : [];

    public IEnumerable<IPAddress> Addresses => _byAddress.Keys;

    public IEnumerable<(Holder Holder, IReadOnlyList<IPAddress> Addresses)> Entries => _byService.Values;

    /// <summary>Why <paramref name="holder"/> may not hold <paramref name="address"/>, or null if it may.</summary>
    public string? Clash(IPAddress address, Holder holder)
    {
        var holds = HoldersOf(address).Any(h => h.Service == holder.Service);
        foreach (var other in HoldersOf(address))
            if (!(other.Pinned && holds) && holder.ClashWith(other) is { } why) return why;
        return null;
    }

    /// <summary>Gives the holder exactly these addresses (replacing what it held), unless one clashes; then nothing changes.</summary>
    public string? TryClaim(Holder holder, IReadOnlyList<IPAddress> addresses)
    {
        foreach (var a in addresses)
            if (Clash(a, holder) is { } why) return $"{a} is {why}";
        Release(holder.Service);
        if (addresses.Count > 0) Add(holder, addresses);
        return null;
    }

    /// <summary>Records that the Service holds these addresses although its current terms clash with another holder's
    /// (its sharing key or ports were edited, and no new address could be found yet): it keeps them, unshared, so
    /// nobody else is given them, until a new allocation replaces the pin.</summary>
    public void Pin(string service, IReadOnlyList<IPAddress> addresses)
    {
        Release(service);
        if (addresses.Count > 0) Add(new Holder(service, null, new HashSet<PortKey>(), Pinned: true), addresses);
    }

    private void Add(Holder holder, IReadOnlyList<IPAddress> addresses)
    {
        _byService[holder.Service] = (holder, addresses.ToArray());
        foreach (var a in addresses)
        {
            if (!_byAddress.TryGetValue(a, out var list)) _byAddress[a] = list = [];
            list.Add(holder);
        }
    }

    public void Release(string service)
    {
        if (!_byService.Remove(service, out var entry)) return;
        foreach (var a in entry.Addresses)
        {
            var list = _byAddress[a];
            list.RemoveAll(h => h.Service == service);
            if (list.Count == 0) _byAddress.Remove(a);
        }
    }

    public void Clear()
    {
        _byAddress.Clear();
        _byService.Clear();
    }
}
