using System.Runtime.InteropServices;

namespace Merlin.Lab.Server;

/// <summary>Ways a loop is told to stop early and still print its report.</summary>
public static class Signals
{
    /// <summary>SIGTERM and SIGINT cancel <paramref name="stop"/> instead of killing the process.</summary>
    public static IDisposable OnTerminate(CancellationTokenSource stop)
    {
        void Handler(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            try
            {
                stop.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // Already finished.
            }
        }
        return new Both(PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handler), PosixSignalRegistration.Create(PosixSignal.SIGINT, Handler));
    }

    /// <summary>
    /// Cancels <paramref name="stop"/> when stdin reaches end of file: the lab keeps a pipe to every process
    /// it starts, so a server whose test process died (and with it the pipe) stops by itself.
    /// </summary>
    public static void CancelOnStdinEof(CancellationTokenSource stop)
    {
        var thread = new Thread(() =>
        {
            try
            {
                using var stdin = Console.OpenStandardInput();
                var buf = new byte[256];
                while (stdin.Read(buf, 0, buf.Length) > 0)
                {
                    // Input is ignored; only its end matters.
                }
            }
            catch (IOException)
            {
                // Treated as end of input.
            }
            try
            {
                stop.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // Already finished.
            }
        })
        { IsBackground = true, Name = "stdin-watch" };
        thread.Start();
    }

    private sealed class Both(IDisposable a, IDisposable b) : IDisposable
    {
        public void Dispose()
        {
            a.Dispose();
            b.Dispose();
        }
    }
}
