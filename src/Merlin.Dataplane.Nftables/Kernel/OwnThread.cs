namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>Runs work on a new thread of its own (so a long native call blocks no pool thread), without blocking the caller.</summary>
internal static class OwnThread
{
    /// <summary>nft's parser and evaluator recurse; give them what a process's main thread has.</summary>
    private const int StackSize = 8 << 20;

    public static Task<T> RunAsync<T>(Func<T> work, Action? after = null)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                var result = work();
                after?.Invoke();
                after = null;
                done.SetResult(result);
            }
            catch (Exception e)
            {
                after?.Invoke();
                done.SetException(e);
            }
        }, StackSize) { IsBackground = true, Name = "merlin-nft" };
        thread.Start();
        return done.Task;
    }
}
