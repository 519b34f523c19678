using Merlin.Model;

namespace Merlin.Dataplane.Abstractions;

/// <summary>
/// A dataplane that programs md-table services from their stored table (<see cref="IDataplane.ProgramsStoredTables"/>)
/// and tells what it programmed, so operators can compare nodes (<c>meradm status</c>) and see what each change moved.
/// </summary>
public interface IProgrammedTables
{
    /// <summary>Each md-table service's table as programmed at the last pass, in service order.</summary>
    IReadOnlyList<ProgrammedTable> Tables { get; }
}

/// <summary>
/// One md-table service's programmed table: its <paramref name="Hash"/> (16 hex digits, the stored table's when it was
/// usable); <paramref name="Problem"/>, why the stored table was not used as is (damaged, or not made for the service's
/// servers) and the node programmed its own recomputation instead, else null; <paramref name="Changes"/> and
/// <paramref name="SlotsMoved"/>, the table changes programmed since the daemon started and the slots they moved in all.
/// </summary>
public sealed record ProgrammedTable(ServiceKey Service, string Hash, string? Problem, long Changes, long SlotsMoved);
