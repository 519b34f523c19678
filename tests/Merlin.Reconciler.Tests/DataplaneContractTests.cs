using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;
using Merlin.Reconciler;

namespace Merlin.Dataplane.Contract;

/// <summary>
/// The promises every <see cref="IDataplane"/> keeps, run against each one by a subclass that says how to open a
/// fresh dataplane (an empty kernel table: a scratch namespace, the guest's) and, where it can, how to make a
/// service that is not the dataplane's. This file is linked into each dataplane's test project.
/// </summary>
public abstract class DataplaneContractTests : IAsyncLifetime
{
    private IDataplane? _dataplane;

    protected IDataplane Dataplane => _dataplane ?? throw new InvalidOperationException("the dataplane is not open");

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Opens the dataplane of this test over an empty table.</summary>
    protected abstract Task<IDataplane> OpenAsync();

    /// <summary>
    /// Puts a service into the kernel behind the dataplane's back, as another program would (kube-proxy, an
    /// operator); false where the dataplane has no kernel table to share.
    /// </summary>
    protected virtual Task<bool> AddForeignServiceAsync() => Task.FromResult(false);

    /// <summary>Whether the service <see cref="AddForeignServiceAsync"/> made is still in the kernel.</summary>
    protected virtual Task<bool> ForeignServiceExistsAsync() => Task.FromResult(false);

    /// <summary>How real servers are reached in these tests: NAT, which every dataplane forwards without knowing MACs.</summary>
    protected virtual ForwardMethod Forward => ForwardMethod.Masq;

    public virtual async ValueTask InitializeAsync() => _dataplane = await OpenAsync();

    public virtual ValueTask DisposeAsync()
    {
        (_dataplane as IDisposable)?.Dispose();
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }

    protected static readonly ServiceKey Web = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.10"), 80, Protocol.Tcp);
    protected static readonly ServiceKey Mail = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.11"), 25, Protocol.Tcp);
    protected static readonly ServiceKey Dns = ServiceKey.ForAddress(IPAddress.Parse("198.18.0.12"), 53, Protocol.Udp);
    protected static readonly RealServerKey Rs1 = new(IPAddress.Parse("198.18.1.1"), 8080);
    protected static readonly RealServerKey Rs2 = new(IPAddress.Parse("198.18.1.2"), 8080);

    protected static ServiceConfig Maglev(SchedulerFlags flags = SchedulerFlags.None) => new() { Scheduler = "mh", Flags = flags };

    protected RealServerConfig Server(uint weight) => new() { Weight = weight, Forward = Forward };

    private async Task<IReadOnlyList<Exception?>> ApplyAsync(params Operation[] plan) => await Dataplane.ApplyAsync(plan, Ct);

    private async Task MustApplyAsync(params Operation[] plan)
    {
        var errors = await ApplyAsync(plan);
        var failed = plan.Zip(errors).Where(x => x.Second is not null).Select(x => $"{x.First}: {x.Second!.Message}").ToList();
        Assert.True(failed.Count == 0, string.Join("\n", failed));
    }

    /// <summary>The service as the dataplane reads it back (null when it holds none by that key).</summary>
    private async Task<ServiceState?> ReadAsync(ServiceKey key) => (await Dataplane.ReadAsync(Ct)).Services.GetValueOrDefault(key);

    [Fact]
    public async Task AFreshDataplane_ReadsNothing()
    {
        Assert.Empty((await Dataplane.ReadAsync(Ct)).Services);
    }

    [Fact]
    public async Task AServiceAndItsServers_ReadBackAsApplied()
    {
        await MustApplyAsync(new AddService(Web, Maglev()), new AddServer(Web, Rs1, Server(10)), new AddServer(Web, Rs2, Server(20)));

        var web = await ReadAsync(Web);

        Assert.NotNull(web);
        Assert.Equal("mh", web.Config.Scheduler);
        Assert.Equal(2, web.Servers.Count);
        Assert.Equal(10u, web.Servers[Rs1].Weight);
        Assert.Equal(20u, web.Servers[Rs2].Weight);
        Assert.Equal(Forward, web.Servers[Rs2].Forward);
    }

    [Fact]
    public async Task UpdatesOfServerAndService_ReadBackAsApplied()
    {
        await MustApplyAsync(new AddService(Web, Maglev()), new AddServer(Web, Rs1, Server(10)), new AddServer(Web, Rs2, Server(20)));

        await MustApplyAsync(new UpdateServer(Web, Rs1, Server(0)), new UpdateService(Web, Maglev(SchedulerFlags.Flag2)));

        var web = await ReadAsync(Web);
        Assert.NotNull(web);
        Assert.Equal(0u, web.Servers[Rs1].Weight);
        Assert.Equal(20u, web.Servers[Rs2].Weight);
        Assert.Equal(SchedulerFlags.Flag2, web.Config.Flags);
    }

    [Fact]
    public async Task DeletingServersThenTheService_LeavesNothing()
    {
        await MustApplyAsync(new AddService(Web, Maglev()), new AddServer(Web, Rs1, Server(1)), new AddService(Mail, Maglev()), new AddServer(Mail, Rs1, Server(1)));

        await MustApplyAsync(new DeleteServer(Web, Rs1), new DeleteService(Web));

        var state = await Dataplane.ReadAsync(Ct);
        Assert.Equal([Mail], state.Services.Keys);
        Assert.Equal([Rs1], state.Services[Mail].Servers.Keys);
    }

    [Fact]
    public async Task WhatItReadsBack_PlansNothing_WhenItIsWhatWasWanted()
    {
        var desired = new DataplaneState(
        [
            new ServiceState(Web, Maglev(), new Dictionary<RealServerKey, RealServerConfig> { [Rs1] = Server(3), [Rs2] = Server(5) }),
            new ServiceState(Dns, Maglev(), new Dictionary<RealServerKey, RealServerConfig> { [Rs1] = Server(1) }),
        ]);
        await MustApplyAsync([.. Planner.Plan(desired, await Dataplane.ReadAsync(Ct))]);

        // Read twice: the second read (a resync) must not find anything to repair either.
        await Dataplane.ReadAsync(Ct);
        var actual = await Dataplane.ReadAsync(Ct);

        Assert.Empty(Planner.Plan(desired, actual));
    }

    [Fact]
    public async Task APlan_WithAFailedOperation_AppliesTheRest_AndSaysWhichFailed()
    {
        await MustApplyAsync(new AddService(Web, Maglev()));

        // Web exists already, so its add fails, and Mail has no service to take a server.
        var errors = await ApplyAsync(
            new AddService(Web, Maglev()),
            new AddService(Dns, Maglev()),
            new AddServer(Dns, Rs1, Server(1)),
            new AddServer(Mail, Rs2, Server(1)));

        Assert.NotNull(errors[0]);
        Assert.Null(errors[1]);
        Assert.Null(errors[2]);
        Assert.NotNull(errors[3]);
        Assert.All(errors.OfType<Exception>(), e => Assert.IsType<DataplaneException>(e));
        var state = await Dataplane.ReadAsync(Ct);
        Assert.Equal([Web, Dns], state.Services.Keys.Order(ServiceKeyComparer.Instance));   // tcp before udp
        Assert.Equal([Rs1], state.Services[Dns].Servers.Keys);
    }

    [Fact]
    public async Task AServerOfAServiceThatCouldNotBeAdded_IsNotTried()
    {
        var errors = await ApplyAsync(new AddServer(Mail, Rs1, Server(1)), new AddService(Web, Maglev()), new AddServer(Web, Rs1, Server(1)));

        Assert.NotNull(errors[0]);
        Assert.Null(errors[1]);
        Assert.Null(errors[2]);
        Assert.Equal([Web], (await Dataplane.ReadAsync(Ct)).Services.Keys);
    }

    [Fact]
    public async Task AServiceThatIsNotItsOwn_IsNeitherReadNorTouched()
    {
        if (!await AddForeignServiceAsync()) Assert.Skip("this dataplane shares no kernel table");
        await MustApplyAsync(new AddService(Web, Maglev()), new AddServer(Web, Rs1, Server(1)));

        Assert.Equal([Web], (await Dataplane.ReadAsync(Ct)).Services.Keys);
        await MustApplyAsync(new DeleteServer(Web, Rs1), new DeleteService(Web));

        Assert.Empty((await Dataplane.ReadAsync(Ct)).Services);
        Assert.True(await ForeignServiceExistsAsync(), "the foreign service was removed");
    }
}
