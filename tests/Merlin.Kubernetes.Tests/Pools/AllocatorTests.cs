using System.Net;
using System.Net.Sockets;
using CsCheck;
using Merlin.Kubernetes.Kube;
using Merlin.Kubernetes.Pools;

namespace Merlin.Kubernetes.Tests.Pools;

public class AllocatorTests
{
    private static readonly IReadOnlyDictionary<string, string> NoLabels = new Dictionary<string, string>();
    private static readonly AddressFamily V4 = AddressFamily.InterNetwork, V6 = AddressFamily.InterNetworkV6;

    internal static IpPool Pool(string name, params string[] addresses) =>
        IpPool.Parse(name, new V1IPPoolSpec { Addresses = addresses }, out var error) ?? throw new InvalidOperationException(error);

    private static Holder H(string service, string? key = null, params string[] ports) =>
        new(service, key, ports.Select(p => p.Split('/')).Select(p => new PortKey(p[0], int.Parse(p[1]))).ToHashSet());

    private static AllocationRequest Request(Holder holder, FamilyPolicy policy = FamilyPolicy.SingleStack, AddressFamily[]? families = null,
        string[]? requested = null, string? pool = null, string ns = "default", IReadOnlyDictionary<string, string>? labels = null) =>
        new(ns, labels ?? NoLabels, families ?? [V4], policy, (requested ?? []).Select(IPAddress.Parse).ToList(), pool, holder);

    private static AllocationResult AllocateAndClaim(AddressBook book, IReadOnlyList<IpPool> pools, AllocationRequest request)
    {
        var result = Allocator.Allocate(request, pools, book, book.AddressesOf(request.Holder.Service));
        if (result.Succeeded) Assert.Null(book.TryClaim(request.Holder, result.Addresses));
        return result;
    }

    [Fact]
    public void Allocate_GivesLowestFreeAddress_AndNeverTheSameTwice()
    {
        var pools = new[] { Pool("a", "198.18.100.0/30") };
        var book = new AddressBook();
        var got = Enumerable.Range(0, 4).Select(i => AllocateAndClaim(book, pools, Request(H($"ns/s{i}"))).Addresses.Single().ToString()).ToList();
        Assert.Equal(["198.18.100.0", "198.18.100.1", "198.18.100.2", "198.18.100.3"], got);
        var full = AllocateAndClaim(book, pools, Request(H("ns/s4")));
        Assert.Equal("PoolExhausted", full.Failure!.Reason);
        Assert.Contains("no free IPv4 address in a", full.Failure.Message);
    }

    [Fact]
    public void Allocate_AvoidBuggyIPs_SkipsDotZeroAndDot255()
    {
        var pool = Pool("a", "198.18.100.255-198.18.101.1") with { AvoidBuggyIPs = true };
        var book = new AddressBook();
        Assert.Equal("198.18.101.1", AllocateAndClaim(book, [pool], Request(H("ns/s"))).Addresses.Single().ToString());
    }

    [Fact]
    public void Allocate_AutoAssignOff_OnlyWhenNamedOrRequested()
    {
        var pools = new[] { Pool("manual", "198.18.100.0/30") with { AutoAssign = false } };
        Assert.Equal("NoPoolForFamily", Allocator.Allocate(Request(H("ns/a")), pools, new(), []).Failure!.Reason);
        Assert.Equal("198.18.100.0", Allocator.Allocate(Request(H("ns/a"), pool: "manual"), pools, new(), []).Addresses.Single().ToString());
        Assert.Equal("198.18.100.2", Allocator.Allocate(Request(H("ns/a"), requested: ["198.18.100.2"]), pools, new(), []).Addresses.Single().ToString());
    }

    [Fact]
    public void Allocate_RequestedAddress_RefusedOutsidePoolsOrTaken()
    {
        var pools = new[] { Pool("a", "198.18.100.0/29") };
        var book = new AddressBook();
        AllocateAndClaim(book, pools, Request(H("ns/first"), requested: ["198.18.100.3"]));
        var taken = Allocator.Allocate(Request(H("ns/second"), requested: ["198.18.100.3"]), pools, book, []);
        Assert.Equal("AddressInUse", taken.Failure!.Reason);
        Assert.Contains("held by ns/first", taken.Failure.Message);
        var outside = Allocator.Allocate(Request(H("ns/second"), requested: ["198.18.200.1"]), pools, book, []);
        Assert.Equal("AddressNotInPool", outside.Failure!.Reason);
    }

    [Fact]
    public void Allocate_SharingKey_SharesWhenPortsDiffer_RefusesClash()
    {
        var pools = new[] { Pool("a", "198.18.100.0/29") };
        var book = new AddressBook();
        var web = AllocateAndClaim(book, pools, Request(H("ns/web", "k", "TCP/80")));
        var dns = AllocateAndClaim(book, pools, Request(H("ns/dns", "k", "UDP/53")));
        Assert.Equal(web.Addresses, dns.Addresses);
        // Same key, same port: a new address, not the shared one.
        var web2 = AllocateAndClaim(book, pools, Request(H("ns/web2", "k", "TCP/80")));
        Assert.NotEqual(web.Addresses, web2.Addresses);
        // Asking for the shared address with a clashing port names the clash.
        var clash = Allocator.Allocate(Request(H("ns/web3", "k", "TCP/80"), requested: [web.Addresses[0].ToString()]), pools, book, []);
        Assert.Equal("AddressInUse", clash.Failure!.Reason);
        Assert.Contains("already uses TCP/80", clash.Failure.Message);
        // Another key never shares.
        var other = Allocator.Allocate(Request(H("ns/x", "other", "TCP/8080"), requested: [web.Addresses[0].ToString()]), pools, book, []);
        Assert.Equal("AddressInUse", other.Failure!.Reason);
    }

    [Fact]
    public void Allocate_DualStack_RequireFailsVisibly_PreferServesOneFamily()
    {
        var pools = new[] { Pool("v4", "198.18.100.0/29") };
        var require = Allocator.Allocate(Request(H("ns/r"), FamilyPolicy.RequireDualStack, [V4, V6]), pools, new(), []);
        Assert.Equal("NoPoolForFamily", require.Failure!.Reason);
        Assert.Contains("IPv6", require.Failure.Message);
        var prefer = Allocator.Allocate(Request(H("ns/p"), FamilyPolicy.PreferDualStack, [V4, V6]), pools, new(), []);
        Assert.True(prefer.Succeeded);
        Assert.Equal("198.18.100.0", prefer.Addresses.Single().ToString());
        Assert.Contains("no IPv6 address", prefer.Warning);
        var both = Allocator.Allocate(Request(H("ns/b"), FamilyPolicy.RequireDualStack, [V6, V4]), [.. pools, Pool("v6", "2001:db8::/126")], new(), []);
        Assert.Equal(["2001:db8::", "198.18.100.0"], both.Addresses.Select(a => a.ToString()));
    }

    [Fact]
    public void Allocate_PoolSelectors_LimitWhoMayUseIt()
    {
        var spec = new V1IPPoolSpec
        {
            Addresses = ["198.18.100.0/29"],
            Namespaces = ["prod"],
            ServiceSelector = new k8s.Models.V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["tier"] = "edge" } },
        };
        var pool = IpPool.Parse("edge", spec, out _)!;
        var edge = new Dictionary<string, string> { ["tier"] = "edge" };
        Assert.True(Allocator.Allocate(Request(H("prod/a"), ns: "prod", labels: edge), [pool], new(), []).Succeeded);
        Assert.False(Allocator.Allocate(Request(H("dev/a"), ns: "dev", labels: edge), [pool], new(), []).Succeeded);
        Assert.False(Allocator.Allocate(Request(H("prod/b"), ns: "prod"), [pool], new(), []).Succeeded);
        Assert.Equal("PoolNotAllowed", Allocator.Allocate(Request(H("dev/a"), ns: "dev", pool: "edge"), [pool], new(), []).Failure!.Reason);
    }

    [Fact]
    public void Allocate_KeepsCurrentAddress_EvenWhenItsPoolIsDeleted()
    {
        var book = new AddressBook();
        var first = AllocateAndClaim(book, [Pool("a", "198.18.100.0/29")], Request(H("ns/s")));
        var kept = Allocator.Allocate(Request(H("ns/s")), [Pool("b", "198.18.101.0/29")], book, first.Addresses);
        Assert.Equal(first.Addresses, kept.Addresses);
        Assert.Contains("in no IPPool any more", kept.Warning);
    }

    [Fact]
    public void Allocate_ForeignHolder_IsNeverGivenAway()
    {
        var book = new AddressBook();
        Assert.Null(book.TryClaim(new Holder("other/lb", null, new HashSet<PortKey>(), Foreign: true), [IPAddress.Parse("198.18.100.0")]));
        var r = Allocator.Allocate(Request(H("ns/s")), [Pool("a", "198.18.100.0/30")], book, []);
        Assert.Equal("198.18.100.1", r.Addresses.Single().ToString());
    }

    // The property the issue asks for: whatever sequence of creates, edits, deletes, re-reconciles, restarts (the map
    // rebuilt from status alone) and pool edits, no address is ever held, in any Service's status, by two Services that may
    // not share it; and while neither its request nor the pools change, a Service keeps every address it has.
    [Fact]
    public void Allocate_AnySequence_NeverHandsAnAddressToTwoServices()
    {
        var op = Gen.Select(Gen.Int[0, 5], Gen.Int[0, 7], Gen.Int[0, 1 << 20]);
        op.Array[1, 80].Sample(ops =>
        {
            var pools = PoolsFrom(0);
            var book = new AddressBook();
            var status = new Dictionary<string, IReadOnlyList<IPAddress>>();
            var created = new List<string>();
            var requests = new Dictionary<string, AllocationRequest>();
            var poolEdits = 0;
            var reconciledAt = new Dictionary<string, int>();
            // The terms each Service's addresses were granted under: an edit that finds no new address keeps the old grant.
            var granted = new Dictionary<string, Holder>();
            // Services whose condition says their last allocation failed (they keep their addresses, pinned).
            var waiting = new HashSet<string>();
            foreach (var (kind, index, seed) in ops)
            {
                var name = $"ns/s{index}";
                switch (kind)
                {
                    case 0 or 1: // create (or edit) and reconcile
                        if (!created.Contains(name)) created.Add(name);
                        // An edit keeps the sharing terms (key and ports; edits of those are Allocate_SharingKey_*'s).
                        var fresh = RequestFrom(name, seed);
                        requests[name] = requests.TryGetValue(name, out var was) ? fresh with { Holder = was.Holder } : fresh;
                        reconciledAt.Remove(name);
                        Reconcile(name);
                        break;
                    case 2: // delete
                        created.Remove(name);
                        requests.Remove(name);
                        status.Remove(name);
                        granted.Remove(name);
                        waiting.Remove(name);
                        book.Release(name);
                        break;
                    case 3: // restart / new leader: the map comes from status only
                        book.Clear();
                        foreach (var s in created.Where(s => status.ContainsKey(s) && !waiting.Contains(s)))
                            Assert.Null(book.TryClaim(requests[s].Holder, status[s]));
                        foreach (var s in created.Where(s => status.ContainsKey(s) && waiting.Contains(s)))
                            book.Pin(s, status[s]);
                        break;
                    case 4: // pool edit
                        pools = PoolsFrom(seed);
                        poolEdits++;
                        break;
                    default: // reconcile again: an address that may stay, stays
                        if (!requests.ContainsKey(name)) break;
                        var before = status.GetValueOrDefault(name);
                        var samePools = reconciledAt.GetValueOrDefault(name, -1) == poolEdits;
                        Reconcile(name);
                        if (before is not null && samePools) Assert.All(before, a => Assert.Contains(a, status[name]));
                        break;
                }
                AssertNoDoubleHolding(status, granted);
            }

            void Reconcile(string name)
            {
                var request = requests[name];
                var current = book.AddressesOf(name).Concat(status.GetValueOrDefault(name) ?? []).Distinct().ToList();
                var result = Allocator.Allocate(request, pools, book, current);
                if (result.Succeeded && book.TryClaim(request.Holder, result.Addresses) is null)
                {
                    status[name] = result.Addresses;
                    granted[name] = request.Holder;
                    reconciledAt[name] = poolEdits;
                    waiting.Remove(name);
                }
                else
                {
                    waiting.Add(name);
                    if (status.TryGetValue(name, out var kept)) book.Pin(name, kept);
                }
            }
        }, iter: 400);
    }

    private static void AssertNoDoubleHolding(Dictionary<string, IReadOnlyList<IPAddress>> status, Dictionary<string, Holder> granted)
    {
        var holders = status.SelectMany(s => s.Value.Select(a => (Address: a, Holder: granted[s.Key]))).GroupBy(x => x.Address);
        foreach (var g in holders)
        {
            var list = g.Select(x => x.Holder).ToList();
            for (var i = 0; i < list.Count; i++)
                for (var j = i + 1; j < list.Count; j++)
                    Assert.True(list[i].ClashWith(list[j]) is null, $"{g.Key} is held by {list[i].Service} and {list[j].Service}, which may not share it");
        }
    }

    // Small pools so that exhaustion, sharing and overlaps happen often.
    private static IReadOnlyList<IpPool> PoolsFrom(int seed)
    {
        var r = new Random(seed);
        var pools = new List<IpPool>();
        for (var i = 0; i < 1 + r.Next(3); i++)
        {
            var start = r.Next(0, 12);
            var pool = r.Next(4) == 0
                ? Pool($"p{i}", $"2001:db8::{start:x}-2001:db8::{start + r.Next(4):x}")
                : Pool($"p{i}", $"198.18.100.{start}-198.18.100.{start + r.Next(6)}");
            pools.Add(pool with { AutoAssign = r.Next(5) != 0, AvoidBuggyIPs = r.Next(2) == 0 });
        }
        return pools;
    }

    private static AllocationRequest RequestFrom(string name, int seed)
    {
        var r = new Random(seed);
        string? key = r.Next(3) switch { 0 => null, 1 => "a", _ => "b" };
        var ports = new[] { "TCP/80", "TCP/443", "UDP/53" }.Where(_ => r.Next(2) == 0).DefaultIfEmpty("TCP/80").ToArray();
        var policy = (FamilyPolicy)r.Next(3);
        AddressFamily[] families = policy == FamilyPolicy.SingleStack ? [r.Next(4) == 0 ? V6 : V4] : [V4, V6];
        string[] requested = r.Next(5) == 0 ? [$"198.18.100.{r.Next(0, 14)}"] : [];
        if (requested.Length > 0) (policy, families) = (FamilyPolicy.SingleStack, [V4]);
        return Request(H(name, key, ports), policy, families, requested, r.Next(6) == 0 ? $"p{r.Next(3)}" : null);
    }
}
