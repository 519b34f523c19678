using Merlin.Model;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Store.Protobuf;

/// <summary>
/// A stored service as its protobuf record. Decoded on first read, and only then (the API's List never decodes);
/// lenient where a record the API would refuse today must keep working.
/// </summary>
internal sealed class ProtobufService(Wire.VirtualService message) : StoredService, IEquatable<ProtobufService>
{
    // A reference, written whole: readers on other threads see it complete or not at all (then decode again).
    private Decoded<Model.VirtualService>? _decoded;
    private int _writtenByMerlin; // 0 not known yet, 1 yes, 2 no: an int is written whole

    public Wire.VirtualService Message { get; } = message ?? throw new ArgumentNullException(nameof(message));

    public override string Id => Message.Id;

    public override Model.VirtualService? Service => (_decoded ??= Decode(Message)).Model;

    public override string? Problem => (_decoded ??= Decode(Message)).Problem;

    public override bool WrittenByMerlin =>
        (_writtenByMerlin != 0 ? _writtenByMerlin : _writtenByMerlin = RecordDigest.WrittenByMerlin(Message) ? 1 : 2) == 1;

    private static Decoded<Model.VirtualService> Decode(Wire.VirtualService wire)
    {
        var error = WireMapper.TryToModel(wire, out var service);
        if (error?.Field == "config.flags")
        {
            // The Go merlin passed any flag to the kernel, which ignores flags a scheduler does not use.
            // Such a record must keep working after an upgrade: drop the flag, say so, program the rest.
            var lenient = wire.Clone();
            var scheduler = lenient.Config.Scheduler.Trim();
            var usable = lenient.Config.Flags.Where(f => Schedulers.ParseFlags(scheduler, [f], "", out _) is null).ToList();
            lenient.Config.Flags.Clear();
            lenient.Config.Flags.AddRange(usable);
            if (WireMapper.TryToModel(lenient, out service) is null) return new(service, $"{error} (that flag is ignored; the service is programmed)");
        }
        return error is null ? new(service, null) : new(null, error.ToString());
    }

    public bool Equals(ProtobufService? other) => other is not null && Message.Equals(other.Message);

    public override bool Equals(object? obj) => Equals(obj as ProtobufService);

    public override int GetHashCode() => Message.GetHashCode();

    public override string ToString() => Message.ToString();
}
