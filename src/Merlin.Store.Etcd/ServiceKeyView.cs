namespace Merlin.Store.Etcd;

/// <summary>
/// Which service holds which service key (ip:port:protocol or fwmark), as a watch of the <c>services/</c>
/// range has brought them up to <see cref="Revision"/>. The store feeds it (one read, then the watch's
/// events; a compaction or a lost watch starts over with a read) and its creates check it instead of
/// reading the range. It also keeps which services keep no lookup table, and at which version, so a server
/// write to one of them needs no read first. Pure state behind one lock; callers wait for a revision with
/// <see cref="WaitAsync"/>.
/// </summary>
internal sealed class ServiceKeyView
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, string> _identityOf = new(StringComparer.Ordinal);
    // Usually one id per key; more only if a Go merlin (which checks nothing atomically) wrote duplicates.
    private readonly Dictionary<string, List<string>> _holdersOf = new(StringComparer.Ordinal);
    // The version (mod revision) of each service whose record, at that version, keeps no lookup table.
    private readonly Dictionary<string, long> _tableFree = new(StringComparer.Ordinal);
    private TaskCompletionSource _moved = NewSignal();
    private TaskCompletionSource _wanted = NewSignal();
    private long _revision;
    private bool _current;

    /// <summary>Everything through this revision has been applied (0: not read yet).</summary>
    public long Revision
    {
        get { lock (_gate) return _revision; }
    }

    /// <summary>Starts over from a read of the whole range at <paramref name="revision"/>.</summary>
    public void Reset(IEnumerable<ServiceEntry> services, long revision)
    {
        lock (_gate)
        {
            _identityOf.Clear();
            _holdersOf.Clear();
            _tableFree.Clear();
            foreach (var entry in services) PutLocked(entry);
            _revision = revision;
            _current = true;
            SignalLocked();
        }
    }

    /// <summary>A service was written (at <see cref="ServiceEntry.Version"/>).</summary>
    public void Put(ServiceEntry entry)
    {
        lock (_gate) PutLocked(entry);
    }

    public void Delete(string id)
    {
        lock (_gate) RemoveLocked(id);
    }

    /// <summary>Every event through <paramref name="revision"/> has been applied.</summary>
    public void Advance(long revision)
    {
        lock (_gate)
        {
            if (revision <= _revision) return;
            _revision = revision;
            SignalLocked();
        }
    }

    /// <summary>The watch broke: until the next <see cref="Reset"/> nobody may rely on the view.</summary>
    public void Fail()
    {
        lock (_gate)
        {
            _current = false;
            _wanted = NewSignal(); // waiters from now on ask for the next attempt
            SignalLocked();
        }
    }

    /// <summary>Completes when someone waits for the view while it does not follow etcd (the follower may retry at once).</summary>
    public Task Wanted()
    {
        lock (_gate) return _wanted.Task;
    }

    /// <summary>The key <paramref name="id"/> holds in the view (null: no such service, or no key).</summary>
    public string? IdentityOf(string id)
    {
        lock (_gate) return _identityOf.GetValueOrDefault(id);
    }

    /// <summary>
    /// The version of service <paramref name="id"/> in the view if at that version it keeps no lookup table (0 if it
    /// keeps one, is not in the view, or the view does not follow etcd), and the key it holds at that version (empty:
    /// none). A write that compares the service's version with it knows, if the compare holds, that the service keeps
    /// no table and has that key — so a server write can check the server's family without a read.
    /// </summary>
    public (long Version, string Identity) TableFree(string id)
    {
        lock (_gate)
            return _current && _tableFree.TryGetValue(id, out var version) ? (version, _identityOf.GetValueOrDefault(id, "")) : (0, "");
    }

    /// <summary>The services other than <paramref name="exceptId"/> that hold <paramref name="identity"/> in the view.</summary>
    public string[] HoldersOf(string identity, string? exceptId)
    {
        lock (_gate)
        {
            return _holdersOf.TryGetValue(identity, out var ids) ? [.. ids.Where(id => id != exceptId)] : [];
        }
    }

    /// <summary>Waits until the view follows etcd and has reached <paramref name="revision"/>; returns the revision reached.</summary>
    public async Task<long> WaitAsync(long revision, CancellationToken ct)
    {
        while (true)
        {
            Task moved;
            lock (_gate)
            {
                if (_current && _revision >= revision) return _revision;
                if (!_current) _wanted.TrySetResult();
                moved = _moved.Task;
            }
            await moved.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    private void PutLocked(ServiceEntry entry)
    {
        var (id, identity) = (entry.Id, entry.Identity);
        RemoveLocked(id);
        if (!entry.KeepsTable) _tableFree[id] = entry.Version;
        if (identity.Length == 0) return;
        _identityOf[id] = identity;
        if (!_holdersOf.TryGetValue(identity, out var ids)) _holdersOf[identity] = ids = new List<string>(1);
        ids.Add(id);
    }

    private void RemoveLocked(string id)
    {
        _tableFree.Remove(id);
        if (!_identityOf.Remove(id, out var old)) return;
        var ids = _holdersOf[old];
        ids.Remove(id);
        if (ids.Count == 0) _holdersOf.Remove(old);
    }

    private void SignalLocked()
    {
        var moved = _moved;
        _moved = NewSignal();
        moved.SetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>
/// A service as the view keeps it: its id, its key (empty: none), the version (mod revision) of the record, and
/// whether that record may keep a lookup table.
/// </summary>
internal readonly record struct ServiceEntry(string Id, string Identity, long Version, bool KeepsTable);
