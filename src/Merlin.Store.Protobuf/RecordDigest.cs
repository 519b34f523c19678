using Google.Protobuf;
using Merlin.Contracts;

namespace Merlin.Store.Protobuf;

/// <summary>
/// Merlin's mark on the records its API writes (<c>merlin_digest</c>, field 15 of VirtualService and RealServer):
/// FNV-1a 64 of the record serialized without the field. A Go merlin writes records byte for byte like Merlin's for
/// the fields both know, so only the mark tells the writers apart: a Go merlin's create has none, and its edit keeps
/// the mark (golang/protobuf keeps unknown fields through unmarshal, clone, merge and marshal) over content that no
/// longer matches it. A record whose mark is missing or does not match was last written by something other than a
/// Merlin that marks its writes: a Go merlin, or a Merlin from before the mark.
/// </summary>
/// <remarks>
/// The digest is taken over Google.Protobuf's serialization (fields in number order, unknown fields after), not
/// over the stored bytes: a Go merlin writes the fields it does not know after its own, so the same content comes
/// back in another order. Unknown fields are included, so a newer Merlin's additions still verify. FNV, not a
/// cryptographic hash: this tells writers apart, and anyone with write access to the store could forge it anyway.
/// </remarks>
public static class RecordDigest
{
    private const ulong Offset = 14695981039346656037;
    private const ulong Prime = 1099511628211;

    /// <summary>FNV-1a, 64 bits.</summary>
    public static ulong Fnv1a64(ReadOnlySpan<byte> data)
    {
        var hash = Offset;
        foreach (var b in data)
        {
            hash ^= b;
            hash *= Prime;
        }
        return hash;
    }

    public static ulong Compute(VirtualService service)
    {
        var copy = service.Clone();
        copy.ClearMerlinDigest();
        return Fnv1a64(copy.ToByteArray());
    }

    public static ulong Compute(RealServer server)
    {
        var copy = server.Clone();
        copy.ClearMerlinDigest();
        return Fnv1a64(copy.ToByteArray());
    }

    /// <summary>The record with Merlin's mark over its current content, as the API stores it (a copy).</summary>
    public static VirtualService Stamped(VirtualService service)
    {
        var copy = service.Clone();
        copy.MerlinDigest = Compute(copy);
        return copy;
    }

    /// <inheritdoc cref="Stamped(VirtualService)"/>
    public static RealServer Stamped(RealServer server)
    {
        var copy = server.Clone();
        copy.MerlinDigest = Compute(copy);
        return copy;
    }

    /// <summary>Whether a Merlin that marks its writes wrote this content last.</summary>
    public static bool WrittenByMerlin(VirtualService service) => service.HasMerlinDigest && service.MerlinDigest == Compute(service);

    /// <inheritdoc cref="WrittenByMerlin(VirtualService)"/>
    public static bool WrittenByMerlin(RealServer server) => server.HasMerlinDigest && server.MerlinDigest == Compute(server);

    /// <summary>Equal but for the mark: an update that changes only the mark changes nothing.</summary>
    public static bool SameContent(VirtualService a, VirtualService b) => Unmarked(a).Equals(Unmarked(b));

    /// <inheritdoc cref="SameContent(VirtualService, VirtualService)"/>
    public static bool SameContent(RealServer a, RealServer b) => Unmarked(a).Equals(Unmarked(b));

    /// <summary>The record without Merlin's mark: <paramref name="s"/> itself if it has none, else a copy (what a store hands out may be shared).</summary>
    public static VirtualService Unmarked(VirtualService s)
    {
        if (!s.HasMerlinDigest) return s;
        var copy = s.Clone();
        copy.ClearMerlinDigest();
        return copy;
    }

    /// <inheritdoc cref="Unmarked(VirtualService)"/>
    public static RealServer Unmarked(RealServer s)
    {
        if (!s.HasMerlinDigest) return s;
        var copy = s.Clone();
        copy.ClearMerlinDigest();
        return copy;
    }
}
