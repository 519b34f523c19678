using Merlin.Contracts;

namespace Merlin.Store.Protobuf;

/// <summary>The settings as their protobuf record.</summary>
internal sealed class ProtobufSettings(Settings message) : StoredSettings, IEquatable<ProtobufSettings>
{
    public Settings Message { get; } = message ?? throw new ArgumentNullException(nameof(message));

    public override string Compatibility => Message.Compatibility;

    public bool Equals(ProtobufSettings? other) => other is not null && Message.Equals(other.Message);

    public override bool Equals(object? obj) => Equals(obj as ProtobufSettings);

    public override int GetHashCode() => Message.GetHashCode();

    public override string ToString() => Message.ToString();
}
