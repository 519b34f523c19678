namespace Merlin.Dataplane.Abstractions;

/// <summary>The kernel refused an operation (or a plan); the reconciler records it and retries on a later pass.</summary>
public sealed class DataplaneException(string message, Exception? inner = null) : Exception(message, inner);
