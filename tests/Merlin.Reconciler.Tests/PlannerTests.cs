using System.Net;
using CsCheck;
using Merlin.Model;
using Merlin.Reconciler;

namespace Merlin.Reconciler.Tests;

public class PlannerTests
{
    [Fact]
    public void Plan_AppliedToActual_YieldsDesired() =>
        Gen.Select(Generators.State, Generators.State).Sample((desired, actual) =>
        {
            // ServiceTable throws on an unsafe order: a server before its service, a service deleted with servers.
            var result = Planner.Apply(actual, Planner.Plan(desired, actual));
            return result.SameAs(desired);
        }, iter: 2000);

    [Fact]
    public void Plan_SecondPassAfterApplying_IsEmpty() =>
        Gen.Select(Generators.State, Generators.State).Sample((desired, actual) =>
            Planner.Plan(desired, Planner.Apply(actual, Planner.Plan(desired, actual))).Count == 0, iter: 2000);

    [Fact]
    public void Plan_RemovalsComeBeforeAdditions_AndServersBeforeTheirServiceIsDeleted() =>
        Gen.Select(Generators.State, Generators.State).Sample((desired, actual) =>
        {
            var plan = Planner.Plan(desired, actual);
            var firstAddition = plan.ToList().FindIndex(op => op is AddService or UpdateService or AddServer or UpdateServer);
            var lastRemoval = plan.ToList().FindLastIndex(op => op is DeleteService or DeleteServer);
            return firstAddition < 0 || lastRemoval < firstAddition;
        }, iter: 2000);

    [Fact]
    public void Plan_IsDeterministic_WhateverTheDictionaryOrder() =>
        Gen.Select(Generators.State, Generators.State).Sample((desired, actual) =>
        {
            var reversed = new DataplaneState(desired.Services.Reverse().ToDictionary());
            return Planner.Plan(desired, actual).SequenceEqual(Planner.Plan(reversed, actual));
        }, iter: 500);

    [Fact]
    public void Plan_ChangedWeight_IsOneUpdateNotDeleteAndAdd()
    {
        var vip = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
        var rs = new RealServerKey(IPAddress.Parse("198.18.1.20"), 80);
        var config = new ServiceConfig { Scheduler = "mh", PersistenceNetmask = 32 };
        var actual = new DataplaneState([new ServiceState(vip, config, new Dictionary<RealServerKey, RealServerConfig> { [rs] = new() { Weight = 1 } })]);
        var desired = new DataplaneState([new ServiceState(vip, config, new Dictionary<RealServerKey, RealServerConfig> { [rs] = new() { Weight = 0 } })]);

        var plan = Planner.Plan(desired, actual);

        Assert.Equal([new UpdateServer(vip, rs, new RealServerConfig { Weight = 0 })], plan);
    }

    [Fact]
    public void Plan_NewService_AddsServiceThenServersInAddressOrder()
    {
        var vip = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
        var config = new ServiceConfig { Scheduler = "rr", PersistenceNetmask = 32 };
        var servers = new Dictionary<RealServerKey, RealServerConfig>
        {
            [new(IPAddress.Parse("198.18.1.30"), 80)] = new() { Weight = 1 },
            [new(IPAddress.Parse("198.18.1.4"), 80)] = new() { Weight = 1 },
        };
        var plan = Planner.Plan(new DataplaneState([new ServiceState(vip, config, servers)]), DataplaneState.Empty);

        Assert.Equal(
            ["add service tcp:198.18.0.10:80 (rr)", "add server 198.18.1.4:80 to tcp:198.18.0.10:80 (weight 1, Route)", "add server 198.18.1.30:80 to tcp:198.18.0.10:80 (weight 1, Route)"],
            plan.Select(op => op.ToString()));
    }
}
