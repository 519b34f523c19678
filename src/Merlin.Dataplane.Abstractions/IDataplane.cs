namespace Merlin.Dataplane.Abstractions;

/// <summary>
/// A kernel dataplane (IPVS, nftables) as the reconciler sees it. Only the reconciler calls it; the daemon asks for
/// the optional capabilities (<see cref="IDataplaneCounters"/>, <see cref="IDataplaneDiagnostics"/>,
/// <see cref="IUnresolvedServers"/>) by type, so it never names a concrete dataplane.
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
