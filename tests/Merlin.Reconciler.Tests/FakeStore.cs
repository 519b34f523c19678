using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Merlin.Store;
using Merlin.Store.Protobuf;
using Merlin.Contracts;

namespace Merlin.Reconciler.Tests;

/// <summary>A store double for the reconciler: a settable snapshot, an outage switch and a change feed.</summary>
internal sealed class FakeStore : IStore
{
    private readonly Channel<StoreChange> _changes = Channel.CreateUnbounded<StoreChange>();
    private long _revision = 1;

    public FakeStore() => Items.CollectionChanged += (_, _) => Interlocked.Increment(ref _revision);

    /// <summary>The records; any change moves the revision, as a real store's does.</summary>
    public System.Collections.ObjectModel.ObservableCollection<StoreItem> Items { get; } = [];
    public bool Down { get; set; }
    public int Lists { get; private set; }

    public string Backend => "fake";

    /// <summary>A change event; without a record, as an older store's, a follower has to re-read.</summary>
    public void Changed(string key, Google.Protobuf.IMessage? record = null, StoreChangeKind kind = StoreChangeKind.Put)
    {
        var rev = Interlocked.Increment(ref _revision);
        _changes.Writer.TryWrite(new StoreChange(kind, key, rev)
        {
            Service = record is VirtualService service ? StoredRecords.Of(service) : null,
            Server = record is RealServer server ? StoredRecords.Of(server) : null,
        });
    }

    public Task<StoreSnapshot> ListAsync(CancellationToken ct = default)
    {
        Lists++;
        if (Down) throw new StoreUnavailableException("etcd at 127.0.0.1:1 did not answer");
        return Task.FromResult(new StoreSnapshot(Items.ToList(), Interlocked.Read(ref _revision)));
    }

    public int RevisionReads { get; private set; }

    public Task<long> GetRevisionAsync(CancellationToken ct = default)
    {
        RevisionReads++;
        if (Down) throw new StoreUnavailableException("etcd at 127.0.0.1:1 did not answer");
        return Task.FromResult(Interlocked.Read(ref _revision));
    }

    public async IAsyncEnumerable<StoreChange> WatchAsync(long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await foreach (var change in _changes.Reader.ReadAllAsync(ct))
        {
            if (change.Revision > afterRevision) yield return change;
        }
    }

    public Task CreateServiceAsync(StoredService service, CancellationToken ct = default) => throw new NotSupportedException();
    public Task<Versioned<StoredService>?> GetServiceAsync(string id, CancellationToken ct = default) => throw new NotSupportedException();
    public Task UpdateServiceAsync(StoredService service, long expectedVersion, CancellationToken ct = default) => throw new NotSupportedException();
    public Task DeleteServiceAsync(string id, CancellationToken ct = default) => throw new NotSupportedException();
    public Task CreateServerAsync(StoredServer server, CancellationToken ct = default) => throw new NotSupportedException();
    public Task<Versioned<StoredServer>?> GetServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default) => throw new NotSupportedException();
    public Task UpdateServerAsync(StoredServer server, long expectedVersion, CancellationToken ct = default) => throw new NotSupportedException();
    public Task DeleteServerAsync(string serviceId, string ip, uint port, CancellationToken ct = default) => throw new NotSupportedException();
    public Task DeleteServerAsync(string serviceId, string ip, uint port, long expectedVersion, CancellationToken ct = default) => throw new NotSupportedException();
    public Task<StoredSettings> GetSettingsAsync(CancellationToken ct = default) => Task.FromResult(StoredRecords.Of(new Settings()));
    public Task SetSettingsAsync(StoredSettings settings, CancellationToken ct = default) => throw new NotSupportedException();
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>An item of these records, as a protobuf store reads them.</summary>
    public static StoreItem Item(VirtualService service, IEnumerable<RealServer> servers) =>
        new(StoredRecords.Of(service), [.. servers.Select(StoredRecords.Of)]);

    public static VirtualService Service(string id, string ip, uint port = 80, string scheduler = "mh") => new()
    {
        Id = id,
        Key = new VirtualService.Types.Key { Ip = ip, Port = port, Protocol = Protocol.Tcp },
        Config = new VirtualService.Types.Config { Scheduler = scheduler },
    };

    public static RealServer Server(string serviceId, string ip, uint weight = 1, uint port = 80) => new()
    {
        ServiceID = serviceId,
        Key = new RealServer.Types.Key { Ip = ip, Port = port },
        Config = new RealServer.Types.Config { Weight = weight, Forward = ForwardMethod.Route },
    };
}
