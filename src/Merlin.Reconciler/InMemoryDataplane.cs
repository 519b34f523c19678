namespace Merlin.Reconciler;

/// <summary>
/// <c>--dataplane none</c>: keeps the programmed state in memory and programs no kernel. Useful to run
/// the control plane alone (API, store, planner) and as the reconciler's own test double.
/// </summary>
public sealed class InMemoryDataplane : IDataplane
{
    private readonly Lock _lock = new();
    private readonly ServiceTable _table = new();

    public string Name => "none";

    public long OperationsApplied { get; private set; }

    /// <summary>Tests use this to make the next applications fail.</summary>
    public Func<Operation, Exception?>? FailWith { get; set; }

    public DataplaneState State { get { lock (_lock) return _table.ToState(); } }

    public Task<DataplaneState> ReadAsync(CancellationToken ct) => Task.FromResult(State);

    public Task ApplyAsync(Operation operation, CancellationToken ct)
    {
        if (FailWith?.Invoke(operation) is { } error) throw error;
        lock (_lock)
        {
            try { _table.Apply(operation); }
            catch (InvalidOperationException e) { throw new DataplaneException(e.Message, e); }
            OperationsApplied++;
        }
        return Task.CompletedTask;
    }

    /// <summary>Simulates a change made behind the reconciler's back.</summary>
    public void Tamper(Operation change)
    {
        lock (_lock) _table.Apply(change);
    }
}
