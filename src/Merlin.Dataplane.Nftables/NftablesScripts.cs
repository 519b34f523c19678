using Merlin.Dataplane.Nftables.Kernel;
using Microsoft.Extensions.Logging;

namespace Merlin.Dataplane.Nftables;

/// <summary>
/// nft scripts run as one transaction each, by the same writer the dataplane uses (libnftables in the
/// process; the nft CLI if the library cannot be loaded), for programs other than the dataplane that own
/// a small table of their own (merlin-agent's second-chance rules on a real server).
/// </summary>
public sealed class NftablesScripts : IDisposable
{
    private readonly NftKernel _kernel;

    /// <param name="networkNamespace">Run inside <c>ip netns</c> <paramref name="networkNamespace"/> (tests, lab); null: this process's namespace.</param>
    public NftablesScripts(string? networkNamespace, ILogger logger)
    {
        // The seed is the dataplane's; a script runner never hashes.
        var options = new NftablesOptions { HashSeed = 0, NetworkNamespace = networkNamespace };
        _kernel = NftKernel.Open(options, new ProcessRunner(options.NetworkNamespace, options.IpPath), logger);
    }

    /// <summary>Runs <paramref name="script"/> as one transaction; <see cref="InvalidOperationException"/> with nft's message if refused.</summary>
    public async Task RunAsync(string script, CancellationToken ct)
    {
        try
        {
            await _kernel.RunAsync(script, ct);
        }
        catch (NftException e)
        {
            throw new InvalidOperationException(e.Message, e);
        }
    }

    /// <summary><c>nft -j list counters table {family} {table}</c>: the named counters of one table as JSON; null if the table does not exist.</summary>
    public Task<string?> ListCountersJsonAsync(string family, string table, CancellationToken ct) =>
        _kernel.ListSetJsonAsync("counters", "table", family, table, ct);

    public void Dispose() => _kernel.Dispose();
}
