namespace Merlin.Store.Protobuf;

/// <summary>What a record decodes to: the model (null if it cannot be programmed) and why not, or what was set aside.</summary>
internal sealed record Decoded<T>(T? Model, string? Problem) where T : class;
