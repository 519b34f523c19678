using Merlin.Model;

namespace Merlin.Store;

/// <summary>The fleet-wide settings as the store holds them (fields a newer Merlin added survive a write).</summary>
public abstract class StoredSettings
{
    /// <summary>"go-merlin" while a Go merlin shares the store (<see cref="GoMerlin.Mode"/>); "" = off.</summary>
    public abstract string Compatibility { get; }
}
