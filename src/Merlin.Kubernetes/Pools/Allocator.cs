using System.Net;
using System.Net.Sockets;

namespace Merlin.Kubernetes.Pools;

public enum FamilyPolicy { SingleStack, PreferDualStack, RequireDualStack }

/// <summary>What a Service asks of the pools: its families (<c>spec.ipFamilies</c> and <c>ipFamilyPolicy</c>),
/// addresses it names (<c>merlin.io/load-balancer-ips</c> or <c>spec.loadBalancerIP</c>), a pool it names
/// (<c>merlin.io/pool</c>), and how it may share (<c>merlin.io/sharing-key</c> and its ports).</summary>
public sealed record AllocationRequest(
    string Namespace,
    IReadOnlyDictionary<string, string> Labels,
    IReadOnlyList<AddressFamily> Families,
    FamilyPolicy Policy,
    IReadOnlyList<IPAddress> Requested,
    string? Pool,
    Holder Holder);

/// <summary>Why a Service got no address, in words for its Events and condition. Reasons are CamelCase, as Kubernetes
/// expects of an Event's or a condition's reason.</summary>
public sealed record AllocationFailure(string Reason, string Message)
{
    /// <summary>Every reason the allocator gives (a Service condition with one of these is waiting for an address).</summary>
    public static readonly IReadOnlySet<string> Reasons = new HashSet<string>
    {
        "PoolNotFound", "PoolNotAllowed", "PoolExhausted", "NoPoolForFamily", "InvalidRequest", "AddressNotInPool", "AddressInUse",
    };
}

/// <summary>The addresses given, or why none could be; a warning when a preferred family is missing or a kept address
/// is in no pool any more.</summary>
public sealed record AllocationResult(IReadOnlyList<IPAddress> Addresses, AllocationFailure? Failure, string? Warning = null)
{
    public bool Succeeded => Failure is null;
    public static AllocationResult Fail(string reason, string message) => new([], new(reason, message));
}

/// <summary>Chooses a Service's addresses. Pure: it reads the pools and the book and changes neither; the caller claims
/// the result in the book. Deterministic (pools by name, addresses from the lowest), so a replayed request after a
/// restart gets what it got before.</summary>
public static class Allocator
{
    public static AllocationResult Allocate(AllocationRequest request, IReadOnlyList<IpPool> pools, AddressBook book, IReadOnlyList<IPAddress> current)
    {
        IpPool? named = null;
        if (request.Pool is { } poolName)
        {
            named = pools.FirstOrDefault(p => p.Name == poolName);
            if (named is null) return AllocationResult.Fail("PoolNotFound", $"merlin.io/pool names {poolName}, which is not an IPPool");
            if (!named.Serves(request.Namespace, request.Labels))
                return AllocationResult.Fail("PoolNotAllowed", $"IPPool {poolName} does not serve this Service (its namespaces or serviceSelector leave it out)");
        }
        var eligible = (named is null ? pools.Where(p => p.Serves(request.Namespace, request.Labels)) : [named])
            .OrderBy(p => p.Name, StringComparer.Ordinal).ToList();

        if (request.Requested.Count > 0) return Requested(request, eligible, book);

        var families = request.Policy == FamilyPolicy.SingleStack ? request.Families.Take(1).ToList() : request.Families.Distinct().ToList();
        if (families.Count == 0) families.Add(AddressFamily.InterNetwork);
        var chosen = new List<IPAddress>();
        AllocationFailure? firstFailure = null;
        var warnings = new List<string>();
        foreach (var family in families)
        {
            var address = Keep(request, current, family, eligible, pools, book, warnings)
                ?? Shared(request, family, eligible, book)
                ?? Fresh(request, family, eligible, book);
            if (address is not null) { chosen.Add(address); continue; }
            var name = AddressMath.Name(family);
            var failure = eligible.Any(p => p.Ranges.Any(r => r.Family == family) && (named is not null || p.AutoAssign))
                ? new AllocationFailure("PoolExhausted", $"no free {name} address in " + string.Join(", ", eligible.Where(p => p.Ranges.Any(r => r.Family == family)).Select(p => p.Name)))
                : new AllocationFailure("NoPoolForFamily", named is not null ? $"IPPool {named.Name} has no {name} addresses" : $"no IPPool with autoAssign serves {name} for this Service");
            firstFailure ??= failure;
            if (request.Policy != FamilyPolicy.PreferDualStack) return new([], failure with { Message = failure.Message + (families.Count > 1 ? $" ({request.Policy} needs both families)" : "") });
            warnings.Add($"no {name} address: {failure.Message} (PreferDualStack: served without it)");
        }
        if (chosen.Count == 0) return new([], firstFailure);
        return new(chosen, null, warnings.Count == 0 ? null : string.Join("; ", warnings));
    }

    private static AllocationResult Requested(AllocationRequest request, List<IpPool> eligible, AddressBook book)
    {
        var addresses = request.Requested;
        if (addresses.Count > 2 || addresses.Select(a => a.AddressFamily).Distinct().Count() != addresses.Count)
            return AllocationResult.Fail("InvalidRequest", "at most one address per family may be requested");
        if (request.Policy == FamilyPolicy.SingleStack && addresses.Count > 1)
            return AllocationResult.Fail("InvalidRequest", "a SingleStack Service may request one address, not two");
        if (request.Policy == FamilyPolicy.RequireDualStack && addresses.Count < 2)
            return AllocationResult.Fail("InvalidRequest", "a RequireDualStack Service that requests addresses must request one of each family");
        foreach (var a in addresses)
        {
            if (!request.Families.Contains(a.AddressFamily) && request.Families.Count > 0)
                return AllocationResult.Fail("InvalidRequest", $"{a} is {AddressMath.Name(a.AddressFamily)}, a family the Service does not have (spec.ipFamilies)");
            if (!eligible.Any(p => p.Contains(a)))
                return AllocationResult.Fail("AddressNotInPool", request.Pool is null
                    ? $"{a} is in no IPPool that serves this Service"
                    : $"{a} is not in IPPool {request.Pool}");
            if (book.Clash(a, request.Holder) is { } why) return AllocationResult.Fail("AddressInUse", $"{a} is {why}");
        }
        return new(addresses, null);
    }

    // The address the Service holds now stays while it is still allowed: in a pool that serves it (or, with no pool
    // named, in no pool at all any more — a deleted pool never renumbers a live Service; it is reported instead).
    private static IPAddress? Keep(AllocationRequest request, IReadOnlyList<IPAddress> current, AddressFamily family,
        List<IpPool> eligible, IReadOnlyList<IpPool> pools, AddressBook book, List<string> warnings)
    {
        var address = current.FirstOrDefault(a => a.AddressFamily == family);
        if (address is null || book.Clash(address, request.Holder) is not null) return null;
        if (eligible.Any(p => p.Contains(address))) return address;
        if (request.Pool is null && !pools.Any(p => p.Contains(address)))
        {
            warnings.Add($"{address} is in no IPPool any more; the Service keeps it until it is deleted");
            return address;
        }
        return null;
    }

    private static IPAddress? Shared(AllocationRequest request, AddressFamily family, List<IpPool> eligible, AddressBook book)
    {
        if (request.Holder.SharingKey is null) return null;
        return book.Entries
            .Where(e => e.Holder.SharingKey == request.Holder.SharingKey && e.Holder.Service != request.Holder.Service)
            .SelectMany(e => e.Addresses)
            .Where(a => a.AddressFamily == family && eligible.Any(p => p.Contains(a)) && book.Clash(a, request.Holder) is null)
            .Distinct()
            .OrderBy(AddressMath.ToNumber)
            .FirstOrDefault();
    }

    private static IPAddress? Fresh(AllocationRequest request, AddressFamily family, List<IpPool> eligible, AddressBook book)
    {
        foreach (var pool in eligible)
        {
            if (request.Pool is null && !pool.AutoAssign) continue;
            foreach (var range in pool.Ranges)
            {
                if (range.Family != family) continue;
                // Each step past the first skips a held or unusable address, so the walk is bounded by what is held.
                for (var n = range.First; ; n++)
                {
                    var address = AddressMath.FromNumber(n, family);
                    if (pool.Usable(address) && book.HoldersOf(address).Count == 0) return address;
                    if (n == range.Last) break;
                }
            }
        }
        return null;
    }
}
