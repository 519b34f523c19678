using System.Net;
using CsCheck;
using Merlin.Model;
using Merlin.Reconciler;

namespace Merlin.Reconciler.Tests;

/// <summary>Small pools of addresses and ports so that random desired and actual states overlap a lot.</summary>
internal static class Generators
{
    private static readonly IPAddress[] Vips =
        [IPAddress.Parse("198.18.0.10"), IPAddress.Parse("198.18.0.11"), IPAddress.Parse("2001:db8::10")];

    private static readonly Gen<ServiceKey> ServiceKeyGen = Gen.OneOf(
        Gen.Select(Gen.Int[0, Vips.Length - 1], Gen.OneOfConst<ushort>(80, 443), Gen.Enum<Protocol>(),
            (i, port, proto) => ServiceKey.ForAddress(Vips[i], port, proto)),
        Gen.Select(Gen.UInt[1, 3], Gen.Enum<IpFamily>(), (mark, fam) => ServiceKey.ForFirewallMark(mark, fam)));

    private static readonly Gen<ServiceConfig> ServiceConfigGen =
        Gen.Select(Gen.OneOfConst("rr", "wrr", "mh"), Gen.OneOfConst(0u, 300u), (s, p) => new ServiceConfig { Scheduler = s, PersistenceTimeout = p, PersistenceNetmask = 32 });

    private static readonly Gen<RealServerKey> ServerKeyGen =
        Gen.Select(Gen.Int[20, 25], Gen.OneOfConst<ushort>(80, 8080), (i, port) => new RealServerKey(IPAddress.Parse($"198.18.1.{i}"), port));

    private static readonly Gen<RealServerConfig> ServerConfigGen =
        Gen.Select(Gen.UInt[0, 3], Gen.Enum<ForwardMethod>(), (w, f) => new RealServerConfig { Weight = w, Forward = f });

    private static readonly Gen<ServiceState> ServiceGen =
        Gen.Select(ServiceKeyGen, ServiceConfigGen, Gen.Dictionary(ServerKeyGen, ServerConfigGen)[0, 5],
            (k, c, servers) => new ServiceState(k, c, servers));

    /// <summary>Any operation on the same pools, valid or not for a given table (the table's rules decide).</summary>
    public static readonly Gen<Operation> Operation = Gen.OneOf<Operation>(
        Gen.Select(ServiceKeyGen, ServiceConfigGen, (k, c) => (Operation)new AddService(k, c)),
        Gen.Select(ServiceKeyGen, ServiceConfigGen, (k, c) => (Operation)new UpdateService(k, c)),
        ServiceKeyGen.Select(k => (Operation)new DeleteService(k)),
        Gen.Select(ServiceKeyGen, ServerKeyGen, ServerConfigGen, (k, s, c) => (Operation)new AddServer(k, s, c)),
        Gen.Select(ServiceKeyGen, ServerKeyGen, ServerConfigGen, (k, s, c) => (Operation)new UpdateServer(k, s, c)),
        Gen.Select(ServiceKeyGen, ServerKeyGen, (k, s) => (Operation)new DeleteServer(k, s)));

    public static readonly Gen<DataplaneState> State =
        ServiceGen.List[0, 8].Select(list =>
        {
            var byKey = new Dictionary<ServiceKey, ServiceState>();
            foreach (var s in list) byKey[s.Key] = s;
            return new DataplaneState(byKey);
        });
}
