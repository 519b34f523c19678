using Merlin.Model;

namespace Merlin.Store;

/// <summary>
/// A virtual service record as the store holds it. Readers see the model it decodes to; the record itself (its
/// encoding, shared with the Go merlin) is known only to the store's codec, which made this object, so a record
/// is written back exactly as it was read. Decoding is lenient where a record the API would refuse today must
/// keep working (written by the Go merlin or an older Merlin): the model is then programmed and
/// <see cref="Problem"/> says what was set aside.
/// </summary>
public abstract class StoredService
{
    public abstract string Id { get; }

    /// <summary>What the record decodes to; null when it cannot be programmed (<see cref="Problem"/> says why).</summary>
    public abstract VirtualService? Service { get; }

    /// <summary>
    /// Why the record is not programmed, or what was set aside to program it (e.g. a flag its scheduler does not
    /// use), naming the record's field; null when the record is what the API would store.
    /// </summary>
    public abstract string? Problem { get; }

    /// <summary>Whether a Merlin that marks its writes wrote this content last (not a Go merlin, not an older Merlin).</summary>
    public abstract bool WrittenByMerlin { get; }
}
