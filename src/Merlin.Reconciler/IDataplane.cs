using System.Collections.Immutable;
using Merlin.Model;

namespace Merlin.Reconciler;

/// <summary>
/// A kernel dataplane (IPVS, nftables) as the reconciler sees it. Only the reconciler calls it.
/// <see cref="ReadAsync"/> returns only what this dataplane owns, so a co-existing kube-proxy or a
/// hand-made service is never planned for deletion.
/// </summary>
public interface IDataplane
{
    string Name { get; }

    /// <summary>Whether it programs md-table services from their stored table (<see cref="Model.ServiceConfig.Table"/>); one that does not never sees it.</summary>
    bool ProgramsStoredTables => false;

    Task<DataplaneState> ReadAsync(CancellationToken ct);

    /// <summary>
    /// Reads with the desired state at hand. A dataplane that shares its kernel table with others (IPVS
    /// beside kube-proxy) uses it to know what it owns: the desired services plus those it created.
    /// </summary>
    Task<DataplaneState> ReadAsync(DataplaneState desired, CancellationToken ct) => ReadAsync(ct);

    /// <summary>Applies one operation; throws <see cref="DataplaneException"/> if the kernel refuses it.</summary>
    Task ApplyAsync(Operation operation, CancellationToken ct);

    /// <summary>
    /// Applies a plan, in order. A dataplane that can make the whole plan one kernel transaction
    /// overrides this (nftables does); by default it is one <see cref="ApplyAsync(Operation, CancellationToken)"/>
    /// per operation. Returns one entry per operation: null if it was applied, else its error. A
    /// server operation whose service could not be added is not tried.
    /// </summary>
    async Task<IReadOnlyList<Exception?>> ApplyAsync(IReadOnlyList<Operation> operations, CancellationToken ct)
    {
        var errors = new Exception?[operations.Count];
        var failedServices = new HashSet<Model.ServiceKey>();
        for (int i = 0; i < operations.Count; i++)
        {
            var op = operations[i];
            if (op is AddServer or UpdateServer && failedServices.Contains(op.Service))
            {
                errors[i] = new DataplaneException($"{op}: its service was not added");
                continue;
            }
            try
            {
                await ApplyAsync(op, ct);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                errors[i] = e;
                if (op is AddService) failedServices.Add(op.Service);
            }
        }
        return errors;
    }
}

public sealed class DataplaneException(string message, Exception? inner = null) : Exception(message, inner);

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
