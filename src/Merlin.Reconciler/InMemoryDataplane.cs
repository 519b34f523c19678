using System.Collections.Immutable;
using Merlin.Dataplane.Abstractions;
using Merlin.Model;

namespace Merlin.Reconciler;

/// <summary>
/// <c>--dataplane none</c>: keeps the programmed state in memory and programs no kernel. Useful to run
/// the control plane alone (API, store, planner) and as the reconciler's own test double.
/// A read returns an immutable snapshot kept up to date by each operation (one service's copy per change),
/// the same instance while nothing changed: a pass after one change costs O(change), not a copy of the
/// whole table (10,000 services × 10 servers).
/// </summary>
public sealed class InMemoryDataplane : IDataplane
{
    private readonly Lock _lock = new();
    private readonly ServiceTable _table = new();
    private ImmutableDictionary<ServiceKey, ServiceState> _services = ImmutableDictionary<ServiceKey, ServiceState>.Empty;
    private DataplaneState? _state;

    public string Name => "none";

    public long OperationsApplied { get; private set; }

    /// <summary>Tests use this to make the next applications fail.</summary>
    public Func<Operation, Exception?>? FailWith { get; set; }

    /// <summary>What is programmed; never changed afterwards (a later operation makes a new one).</summary>
    public DataplaneState State
    {
        get
        {
            lock (_lock) return _state ??= new DataplaneState(_services);
        }
    }

    public Task<DataplaneState> ReadAsync(CancellationToken ct) => Task.FromResult(State);

    public Task ApplyAsync(Operation operation, CancellationToken ct)
    {
        if (FailWith?.Invoke(operation) is { } error) throw error;
        lock (_lock)
        {
            try { Change(operation); }
            catch (InvalidOperationException e) { throw new DataplaneException(e.Message, e); }
            OperationsApplied++;
        }
        return Task.CompletedTask;
    }

    /// <summary>Simulates a change made behind the reconciler's back.</summary>
    public void Tamper(Operation change)
    {
        lock (_lock) Change(change);
    }

    /// <summary>Applies to the table (which enforces the kernel's rules) and replaces the one service in the snapshot.</summary>
    private void Change(Operation operation)
    {
        _table.Apply(operation);
        _services = _table.StateOf(operation.Service) is { } service ? _services.SetItem(operation.Service, service) : _services.Remove(operation.Service);
        _state = null;
    }
}
