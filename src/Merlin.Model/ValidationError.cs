namespace Merlin.Model;

/// <summary>A rejected input: which field, and why, in words a person can act on.</summary>
public sealed record ValidationError(string Field, string Reason)
{
    public override string ToString() => $"{Field}: {Reason}";

    public ValidationError Under(string parent) => this with { Field = $"{parent}.{Field}" };
}

/// <summary>Thrown where a caller skipped validation; never expected in normal flow.</summary>
public sealed class ValidationException(ValidationError error) : Exception(error.ToString())
{
    public ValidationError Error { get; } = error;
}
