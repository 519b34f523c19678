using System.Net;
using Merlin.Dataplane.Abstractions;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Model;
using Merlin.Linux;
using Microsoft.Extensions.Logging.Abstractions;
using static Merlin.Dataplane.Nftables.Tests.Given;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The IDataplane contract with a scripted kernel: errors come back per operation, never as a crash.</summary>
public class ContractTests
{
    private sealed class ScriptedNftables : INftables
    {
        private uint _generation = 1;
        public Func<string, Exception?> Fail { get; set; } = _ => null;
        public List<string> Scripts { get; } = new();

        public Task RunAsync(string script, CancellationToken ct)
        {
            if (Fail(script) is { } e) throw e;
            Scripts.Add(script);
            _generation++;
            return Task.CompletedTask;
        }

        public bool CanStage { get; set; }
        public List<string> Staged { get; } = new();
        public List<string> Unstaged { get; } = new();

        public Func<IReadOnlyList<StagedSet>, Exception?> FailStaging { get; set; } = _ => null;

        public Task<StageResult> StageAsync(IReadOnlyList<StagedSet> sets, CancellationToken ct)
        {
            if (FailStaging(sets) is { } e) throw e;
            Staged.AddRange(sets.Select(s => s.Set.Name));
            _generation++;
            return Task.FromResult(new StageResult(1, []));
        }

        public Task UnstageAsync(StageResult staging, IReadOnlyList<StagedSet> sets, CancellationToken ct)
        {
            Unstaged.AddRange(sets.Select(s => s.Set.Name));
            _generation++;
            return Task.CompletedTask;
        }

        public Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct) => Task.FromResult<string?>(null);
        public Task<uint> GenerationAsync(CancellationToken ct) => Task.FromResult(_generation);
        public Task<IReadOnlyList<KernelTable>> ReadTablesAsync(IReadOnlyList<(string Family, string Name)> tables, CancellationToken ct) =>
            Task.FromResult<IReadOnlyList<KernelTable>>([]);

        /// <summary>flows4's pins; reading them fails with <see cref="FailPinReads"/> while it is set.</summary>
        public List<SetElement> Pins4 { get; } = new();
        public Exception? FailPinReads { get; set; }

        public Task<IReadOnlyList<SetElement>> ReadElementsAsync(string family, string table, string set, CancellationToken ct) =>
            FailPinReads is { } e ? Task.FromException<IReadOnlyList<SetElement>>(e) : Task.FromResult<IReadOnlyList<SetElement>>(set == "flows4" ? Pins4.ToList() : []);

        public Task<int?> DeleteElementsAsync(string family, string table, string set, IReadOnlyList<byte[]> keys, bool evenIfGone, CancellationToken ct)
        {
            Pins4.RemoveAll(p => keys.Any(k => k.AsSpan().SequenceEqual(p.Key)));
            _generation++;
            return Task.FromResult<int?>(1);
        }
    }

    private static (NftablesDataplane, ScriptedNftables, FakeNeighbours) Create()
    {
        var nft = new ScriptedNftables();
        var neighbours = new FakeNeighbours();
        return (new NftablesDataplane(Options(), nft, neighbours, NullLogger.Instance, TimeProvider.System), nft, neighbours);
    }

    private static readonly ServiceKey Vip = Tcp("198.18.0.10", 80);
    private static readonly RealServerKey Rs = new(IPAddress.Parse("198.18.1.11"), 80);

    [Fact]
    public async Task ARefusedBatchOfOne_ComesBackAsItsError()
    {
        var (dataplane, nft, _) = Create();
        nft.Fail = _ => new NftException("Error: Could not process rule: Invalid argument");

        var errors = await dataplane.ApplyAsync([new AddService(Vip, Config())], CancellationToken.None);

        var error = Assert.IsType<DataplaneException>(Assert.Single(errors));
        Assert.Contains("Invalid argument", error.Message);
        Assert.Empty((await dataplane.ReadAsync(CancellationToken.None)).Services);
        await Assert.ThrowsAsync<DataplaneException>(() => ((IDataplane)dataplane).ApplyAsync(new AddService(Vip, Config()), CancellationToken.None));
    }

    [Fact]
    public async Task AMachineFailure_FailsEveryOperation_WithoutThrowing()
    {
        var (dataplane, nft, _) = Create();
        nft.Fail = _ => new IOException("nft: not found");

        var errors = await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 })], CancellationToken.None);

        Assert.All(errors, e => Assert.Contains("not found", Assert.IsType<DataplaneException>(e).Message));
    }

    [Fact]
    public async Task AnOperationTheTableRules_Forbid_FailsAlone()
    {
        var (dataplane, nft, neighbours) = Create();
        neighbours.Table[Rs.Address] = MacOf(Rs.Address);

        var errors = await dataplane.ApplyAsync([
            new AddService(Vip, Config()),
            new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 }),
            new DeleteServer(Tcp("198.18.0.99", 80), Rs)], CancellationToken.None);

        Assert.Null(errors[0]);
        Assert.Null(errors[1]);
        Assert.Contains("no such service", errors[2]!.Message);
        Assert.Single(nft.Scripts);
    }

    [Fact]
    public async Task APinSweepThatFails_LeavesTheChangeProgrammed_AndTheNextResyncSweeps()
    {
        var (dataplane, nft, neighbours) = Create();
        var other = new RealServerKey(IPAddress.Parse("198.18.1.12"), 80);
        neighbours.Table[Rs.Address] = MacOf(Rs.Address);
        neighbours.Table[other.Address] = MacOf(other.Address);
        await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 }), new AddServer(Vip, other, new RealServerConfig { Weight = 1 })], CancellationToken.None);
        // 198.18.9.1:40000 → 198.18.0.10:80 pinned to .12.
        byte[] key = [198, 18, 9, 1, 198, 18, 0, 10, 0x9c, 0x40, 0, 0, 0, 80, 0, 0];
        nft.Pins4.Add(new SetElement(key, MacOf(other.Address).GetAddressBytes()));
        nft.FailPinReads = new IOException("netlink: timed out");

        var errors = await dataplane.ApplyAsync([new DeleteServer(Vip, other)], CancellationToken.None);
        await dataplane.PinSweepRunning;

        Assert.Null(Assert.Single(errors));   // the server is out of the tables: the sweep's failure is not the change's
        Assert.Single(nft.Pins4);
        nft.FailPinReads = null;
        var read = await dataplane.ReadAsync(CancellationToken.None);
        await dataplane.PinSweepRunning;
        Assert.Empty(nft.Pins4);
        Assert.Equal([Rs], read.Services[Vip].Servers.Keys);
    }

    [Fact]
    public async Task AServerWithoutMac_IsReported_AndTheReportChangesWhenItResolves()
    {
        var (dataplane, _, neighbours) = Create();
        int changes = 0;
        dataplane.IssuesChanged += (_, _) => changes++;

        await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 })], CancellationToken.None);

        Assert.Equal([Rs.Address], dataplane.UnresolvedServers);
        Assert.Equal(1, changes);
        Assert.Contains(Rs.Address, neighbours.Tracked);   // resolution was asked for

        neighbours.Table[Rs.Address] = MacOf(Rs.Address);
        await dataplane.ReadAsync(CancellationToken.None);

        Assert.Empty(dataplane.UnresolvedServers);
        Assert.Empty(dataplane.Issues);
        Assert.Equal(2, changes);
    }

    [Fact]
    public async Task NewMaps_AreMadeAhead_AndDeletedAgainWhenTheTransactionIsRefused()
    {
        var (dataplane, nft, neighbours) = Create();
        nft.CanStage = true;
        neighbours.Table[Rs.Address] = MacOf(Rs.Address);
        nft.Fail = _ => new NftException("Error: Could not process rule: Invalid argument");

        var errors = await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 })], CancellationToken.None);

        Assert.Contains("Invalid argument", Assert.IsType<DataplaneException>(errors[0]).Message);
        Assert.Contains("d1", nft.Staged);
        Assert.Equal(nft.Staged, nft.Unstaged);   // every map made for a refused transaction is deleted again

        nft.Fail = _ => null;
        nft.Staged.Clear();
        nft.Unstaged.Clear();
        Assert.All(await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 })], CancellationToken.None), Assert.Null);
        Assert.Equal(["d1"], nft.Staged);
        Assert.Empty(nft.Unstaged);
        var script = Assert.Single(nft.Scripts);
        Assert.DoesNotContain("merlin d1 ", script);      // made ahead, not in nft's script
        Assert.Contains("map @d1", script);               // which puts it in use
    }

    [Fact]
    public async Task MapsTheKernelHasAlready_MakeAWholeRewrite_WhileAnotherRefusalIsTheOperations()
    {
        var (dataplane, nft, neighbours) = Create();
        nft.CanStage = true;
        neighbours.Table[Rs.Address] = MacOf(Rs.Address);
        int refusals = 0;
        nft.FailStaging = _ => refusals++ == 0 ? new NetlinkException(Errno.EEXIST, "nf_tables NEWSET") : null;   // EEXIST once: our picture was stale

        var errors = await dataplane.ApplyAsync([new AddService(Vip, Config()), new AddServer(Vip, Rs, new RealServerConfig { Weight = 1 })], CancellationToken.None);

        Assert.All(errors, Assert.Null);                  // the rewrite that followed programmed it
        Assert.Equal(["d1"], nft.Staged);                 // made by the rewrite's staging (the first attempt threw)
        Assert.Single(nft.Scripts);

        var other = Tcp("198.18.0.11", 80);
        var rs2 = new RealServerKey(IPAddress.Parse("198.18.1.12"), 80);   // another server set: a new map
        neighbours.Table[rs2.Address] = MacOf(rs2.Address);
        nft.FailStaging = _ => new NetlinkException(Errno.EINVAL, "nf_tables NEWSETELEM");   // EINVAL: the change itself is refused
        errors = await dataplane.ApplyAsync([new AddService(other, Config()), new AddServer(other, rs2, new RealServerConfig { Weight = 1 })], CancellationToken.None);
        Assert.Null(errors[0]);                           // found operation by operation: the service alone needs no map
        Assert.Contains("Invalid argument", Assert.IsType<DataplaneException>(errors[1]).Message);
        nft.FailStaging = _ => null;
        var read = await dataplane.ReadAsync(CancellationToken.None);
        Assert.Single(read.Services[Vip].Servers);
        Assert.Empty(read.Services[other].Servers);
    }
}
