using Merlin.Store;

namespace Merlin.Api;

/// <summary>
/// The store's fleet-wide settings as the API's writes consult them: read at most once per <see cref="MaxAge"/>, so a
/// write costs no extra store round trip (one more etcd read per CreateServer adds up at 100,000 servers). A change
/// made through this node applies at once; one made through another node within <see cref="MaxAge"/>.
/// </summary>
public sealed class FleetSettings(IStore store, TimeProvider time)
{
    public static readonly TimeSpan MaxAge = TimeSpan.FromSeconds(1);

    private readonly SemaphoreSlim _reading = new(1, 1);
    private (StoredSettings Value, long ReadAt)? _cached;

    public async ValueTask<StoredSettings> GetAsync(CancellationToken ct)
    {
        if (Fresh() is { } settings) return settings;
        await _reading.WaitAsync(ct);
        try
        {
            if (Fresh() is { } again) return again;
            var read = await store.GetSettingsAsync(ct);
            _cached = (read, time.GetTimestamp());
            return read;
        }
        finally
        {
            _reading.Release();
        }
    }

    /// <summary>After this node wrote the settings: the next write reads them again.</summary>
    public void Forget() => _cached = null;

    private StoredSettings? Fresh() =>
        _cached is { } c && time.GetElapsedTime(c.ReadAt) < MaxAge ? c.Value : null;
}
