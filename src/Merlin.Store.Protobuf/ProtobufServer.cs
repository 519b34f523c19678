using Merlin.Model;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Store.Protobuf;

/// <summary>A stored server as its protobuf record; see <see cref="ProtobufService"/>.</summary>
internal sealed class ProtobufServer(Wire.RealServer message) : StoredServer, IEquatable<ProtobufServer>
{
    private Decoded<Model.RealServer>? _decoded;
    private int _writtenByMerlin; // 0 not known yet, 1 yes, 2 no: an int is written whole

    public Wire.RealServer Message { get; } = message ?? throw new ArgumentNullException(nameof(message));

    public override string ServiceId => Message.ServiceID;

    public override string Endpoint => $"{Message.Key?.Ip}:{Message.Key?.Port}";

    public override Model.RealServer? Server => (_decoded ??= Decode(Message)).Model;

    public override string? Problem => (_decoded ??= Decode(Message)).Problem;

    public override bool WrittenByMerlin =>
        (_writtenByMerlin != 0 ? _writtenByMerlin : _writtenByMerlin = RecordDigest.WrittenByMerlin(Message) ? 1 : 2) == 1;

    private static Decoded<Model.RealServer> Decode(Wire.RealServer wire)
    {
        if (WireMapper.TryToModel(wire, out var server) is not { } error) return new(server, null);
        if (WithinHealthBounds(wire) is not { } bounded || WireMapper.TryToModel(bounded, out server) is not null) return new(null, error.ToString());
        // Stored before the API had bounds (or by the Go merlin): keep it programmed, checked at the nearest bound.
        return new(server, $"{error} (checked every {Durations.Format(server!.HealthCheck.Period)} with a {Durations.Format(server.HealthCheck.Timeout)} timeout instead; the server is programmed)");
    }

    /// <summary>
    /// A stored server whose health-check period or timeout is outside today's bounds, with both moved to the
    /// nearest bound; null when they are not valid durations at all or within bounds (then something else is wrong).
    /// </summary>
    private static Wire.RealServer? WithinHealthBounds(Wire.RealServer wire)
    {
        if (wire.HealthCheck is not { Period: { } p, Timeout: { } t }) return null;
        if (WireMapper.TryDuration(p, "", out var period) is not null || WireMapper.TryDuration(t, "", out var timeout) is not null) return null;
        if (period <= TimeSpan.Zero || timeout <= TimeSpan.Zero) return null;
        if (period >= Validation.MinHealthPeriod && period <= Validation.MaxHealthPeriod && timeout >= Validation.MinHealthTimeout) return null;
        var newPeriod = TimeSpan.FromTicks(Math.Clamp(period.Ticks, Validation.MinHealthPeriod.Ticks, Validation.MaxHealthPeriod.Ticks));
        var newTimeout = TimeSpan.FromTicks(Math.Clamp(timeout.Ticks, Validation.MinHealthTimeout.Ticks, newPeriod.Ticks));
        var bounded = wire.Clone();
        bounded.HealthCheck.Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(newPeriod);
        bounded.HealthCheck.Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(newTimeout);
        return bounded;
    }

    public bool Equals(ProtobufServer? other) => other is not null && Message.Equals(other.Message);

    public override bool Equals(object? obj) => Equals(obj as ProtobufServer);

    public override int GetHashCode() => Message.GetHashCode();

    public override string ToString() => Message.ToString();
}
