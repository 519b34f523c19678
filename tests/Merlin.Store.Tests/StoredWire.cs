using Merlin.Store.Protobuf;
using Merlin.Contracts;

namespace Merlin.Store.Tests;

/// <summary>
/// The suite writes and reads the stored records as their protobuf, through the stores' codec: what a store keeps is
/// part of its contract (a Go merlin reads the same bytes), so the tests say it in the record's own fields.
/// </summary>
internal static class StoredWire
{
    extension(IStore store)
    {
        public Task CreateServiceAsync(VirtualService service, CancellationToken ct = default) => store.CreateServiceAsync(StoredRecords.Of(service), ct);

        public Task UpdateServiceAsync(VirtualService service, long expectedVersion, CancellationToken ct = default) =>
            store.UpdateServiceAsync(StoredRecords.Of(service), expectedVersion, ct);

        public Task CreateServerAsync(RealServer server, CancellationToken ct = default) => store.CreateServerAsync(StoredRecords.Of(server), ct);

        public Task UpdateServerAsync(RealServer server, long expectedVersion, CancellationToken ct = default) =>
            store.UpdateServerAsync(StoredRecords.Of(server), expectedVersion, ct);

        public Task SetSettingsAsync(Settings settings, CancellationToken ct = default) => store.SetSettingsAsync(StoredRecords.Of(settings), ct);
    }

    extension(StoredService stored)
    {
        /// <summary>The record itself.</summary>
        public VirtualService Message => StoredRecords.Message(stored);

        public VirtualService.Types.Key Key => StoredRecords.Message(stored).Key;

        public VirtualService.Types.Config Config => StoredRecords.Message(stored).Config;

        public VirtualService Clone() => StoredRecords.Message(stored).Clone();
    }

    extension(StoredServer stored)
    {
        /// <summary>The record itself.</summary>
        public RealServer Message => StoredRecords.Message(stored);

        public string ServiceID => StoredRecords.Message(stored).ServiceID;

        public RealServer.Types.Key Key => StoredRecords.Message(stored).Key;

        public RealServer.Types.Config Config => StoredRecords.Message(stored).Config;

        public RealServer.Types.HealthCheck HealthCheck => StoredRecords.Message(stored).HealthCheck;

        public RealServer Clone() => StoredRecords.Message(stored).Clone();
    }

    extension(StoredSettings stored)
    {
        /// <summary>The record itself.</summary>
        public Settings Message => StoredRecords.Message(stored);
    }
}
