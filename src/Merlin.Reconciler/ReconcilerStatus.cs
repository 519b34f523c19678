namespace Merlin.Reconciler;

/// <summary>What the reconciler last saw and did, for /readyz, metrics and <c>meradm status</c>.</summary>
public sealed class ReconcilerStatus(TimeProvider time)
{
    private readonly Lock _lock = new();

    /// <param name="Desired">The desired state of the last pass that read the store (kept while the store is
    /// unreachable); the announcer takes the service VIPs from it.</param>
    public sealed record Snapshot(
        bool StoreReachable, bool Ready, DateTimeOffset? LastPass, long Passes, long Errors, long OperationsApplied,
        string? LastError, int Services, int Servers, long Revision, DataplaneState? Desired = null)
    {
        /// <summary>Who wrote the records of the last store read (null before one): a mixed fleet shows here.</summary>
        public StoreOrigins? Origins { get; init; }
    }

    private Snapshot _current = new(false, false, null, 0, 0, 0, null, 0, 0, 0);

    public Snapshot Current { get { lock (_lock) return _current; } }

    public void RecordStoreDown(string reason)
    {
        lock (_lock) _current = _current with { StoreReachable = false, Errors = _current.Errors + 1, LastError = $"store: {reason}" };
    }

    public void RecordStoreOrigins(StoreOrigins origins)
    {
        lock (_lock) _current = _current with { Origins = origins };
    }

    public void RecordPass(long revision, DataplaneState desired, int planned, int applied, int failed, string? error)
    {
        lock (_lock)
        {
            _current = _current with
            {
                StoreReachable = true,
                // Ready once a pass has programmed everything the store asked for.
                Ready = _current.Ready || failed == 0,
                LastPass = time.GetUtcNow(),
                Passes = _current.Passes + 1,
                Errors = _current.Errors + (failed > 0 ? 1 : 0),
                OperationsApplied = _current.OperationsApplied + applied,
                LastError = error ?? (failed == 0 ? null : _current.LastError),
                Services = desired.Services.Count,
                Servers = desired.ServerCount,
                Revision = revision,
                Desired = desired,
            };
        }
    }
}
