namespace Merlin.Store.Etcd;

public sealed class EtcdStoreOptions
{
    /// <summary>
    /// Client URLs of the etcd members, e.g. <c>http://127.0.0.1:2379</c>; a bare <c>host:port</c> means http,
    /// and an entry may itself be a comma-separated list (as the <c>--store-endpoints</c> flag gives it).
    /// </summary>
    public IReadOnlyList<string> Endpoints { get; init; } = ["http://127.0.0.1:2379"];

    /// <summary>Key prefix; the original merlin's is <c>/merlin</c>.</summary>
    public string Prefix { get; init; } = "/merlin";

    /// <summary>Bound on every store call (all its round trips together), and on the start of a watch.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Keys read per round trip by <see cref="EtcdStore.ListAsync"/> (all pages at one revision).</summary>
    public int PageSize { get; init; } = 5_000;

    /// <summary>Computes each service's lookup table in the transaction of the write that changed it (null: no tables).</summary>
    public ServiceTableDeriver? DeriveTable { get; init; }

    /// <summary>
    /// Whether <see cref="DeriveTable"/> may give this service a table; false promises it returns null for the
    /// service whatever its servers. With it, a server write to a service that keeps no table needs no read before
    /// its transaction (null: every service is assumed to keep one, and each such write reads first).
    /// </summary>
    public Func<StoredService, bool>? KeepsTable { get; init; }

    /// <summary>Where the gRPC channel logs its connection and balancing decisions (null: nowhere).</summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? ChannelLogging { get; init; }
}
