using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Linux;

namespace Merlin.Dataplane.Nftables.Kernel;

/// <summary>
/// Writes through libnftables inside this process — the parser and transaction code <c>nft</c> itself
/// runs, without a process per change set. A script is rendered into memory (<see cref="ScriptFile"/>)
/// and libnftables reads it as a file (<c>/dev/fd/N</c>), so a refusal quotes the offending line and
/// a render that fails leaves nothing for nft to commit. libnftables runs on a thread of its
/// own, inside <see cref="NftablesOptions.NetworkNamespace"/> for the native calls only (the context's
/// netlink socket is opened there and interface names are looked up there; see <see cref="NetworkNamespace"/>).
/// <para>
/// The context is kept between runs and freed once it has been idle for <see cref="NftKernel.Linger"/>:
/// closing a netfilter netlink socket right after a transaction waits for the kernel to release
/// that transaction (an RCU grace period: 6–15 ms measured here), which a context freed after
/// every run — or an nft process exiting — pays on every change. A context kept between runs also
/// keeps nft's cache; nft refetches it whenever the ruleset generation moved, which every
/// transaction does. After a large script the context is freed at once and free heap pages go back
/// to the kernel (<c>malloc_trim</c>): nft's parse of the 1,000-map first pass peaks at hundreds of MiB.
/// </para>
/// </summary>
internal sealed partial class NftLib : NftKernel
{
    /// <summary>A script at least this large frees the context after its run, and trims the heap.</summary>
    private const long LargeScript = 1 << 20;

    private readonly LibNftablesApi _api;
    private readonly NftSession _session;

    public NftLib(NftablesOptions options, LibNftablesApi api) : base(options)
    {
        _api = api;
        _session = new NftSession(api, options.NetworkNamespace, Linger);
    }

    public override string Description => $"{_api.Library} (in-process)";

    public override Task RunAsync(string script, CancellationToken ct) =>
        RunAsync(stream => stream.Write(Encoding.UTF8.GetBytes(script)), wanted => LinesOf(script, wanted), ct);

    public override Task RunAsync(NftScript script, CancellationToken ct) =>
        RunAsync(script.WriteTo, wanted => LineCapture.Of(script.WriteTo, wanted), ct);

    /// <summary>Runs what <paramref name="render"/> writes as one transaction; <paramref name="quote"/> finds numbered lines of it again for an error message.</summary>
    internal async Task RunAsync(Action<Stream> render, Func<IReadOnlySet<int>, IReadOnlyDictionary<int, string>> quote, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        using var file = ScriptFile.Create();
        // A render that fails or is cancelled throws here, before nft has seen any of the script.
        var written = await Task.Run(() => file.Write(render, ct), ct);
        var path = $"/dev/fd/{file.Fd}";
        var outcome = await OwnThread.RunAsync(() => _session.Run(path, file: true));
        if (written >= LargeScript)
        {
            _session.Close();
            // Off the pass's path: after the 1,000-map first pass it takes ~85 ms (measured).
            _ = Task.Run(static () => Heap.Trim(), CancellationToken.None);
        }
        if (outcome.Status != 0) throw new NftException(Summarize(Quote(outcome.Error, quote)));
    }

    public override async Task<string?> ListSetJsonAsync(string kind, string family, string table, string name, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var command = $"list {kind} {family} {table} {name}";
        var outcome = await OwnThread.RunAsync(() => _session.Run(command, file: false, LibNftablesApi.OutputJson));
        if (outcome.Status == 0) return outcome.Output;
        if (outcome.Error.Contains("No such file or directory", StringComparison.Ordinal)) return null;
        throw new NftException(Summarize(outcome.Error));
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _session.Close();
        base.Dispose(disposing);
    }

    /// <summary>
    /// nft names the script <c>/dev/fd/N</c>: each located error gets "line L:" instead, and the line
    /// itself from the script if nft did not quote it (it reopens the file to do so).
    /// </summary>
    internal static string Quote(string error, Func<IReadOnlySet<int>, IReadOnlyDictionary<int, string>> lines)
    {
        var located = error.Split('\n').Select(l => (Text: l, Match: Location().Match(l))).ToList();
        int Number(int i) => int.Parse(located[i].Match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        // nft quotes the line itself when it can read the file again: the next line is then its text.
        bool Unquoted(int i) => i + 1 >= located.Count || located[i + 1].Match.Success || located[i + 1].Text.Trim().Length == 0;
        var wanted = Enumerable.Range(0, located.Count).Where(i => located[i].Match.Success && Unquoted(i)).Select(Number).ToHashSet();
        var quoted = wanted.Count == 0 ? new Dictionary<int, string>() : lines(wanted);
        var result = new StringBuilder();
        for (int i = 0; i < located.Count; i++)
        {
            var (text, match) = located[i];
            if (!match.Success)
            {
                result.Append(text).Append('\n');
                continue;
            }
            var line = Number(i);
            result.Append("line ").Append(line).Append(':').Append(text.AsSpan(match.Length)).Append('\n');
            if (Unquoted(i) && quoted.TryGetValue(line, out var source)) result.Append(source).Append('\n');
        }
        return result.ToString();
    }

    [GeneratedRegex(@"^/dev/fd/\d+:(\d+):")]
    private static partial Regex Location();

    private static Dictionary<int, string> LinesOf(string script, IReadOnlySet<int> wanted)
    {
        var lines = script.Split('\n');
        return wanted.Where(n => n >= 1 && n <= lines.Length).ToDictionary(n => n, n => lines[n - 1]);
    }

    /// <summary>Picks numbered lines out of a script as it is rendered again (only after a refusal).</summary>
    private sealed class LineCapture : WriteOnlyStream
    {
        private const int MaxLine = 1000;
        private readonly IReadOnlySet<int> _wanted;
        private readonly Dictionary<int, List<byte>> _lines = new();
        private readonly int _last;
        private int _line = 1;

        private LineCapture(IReadOnlySet<int> wanted)
        {
            _wanted = wanted;
            _last = wanted.Max();
        }

        public static IReadOnlyDictionary<int, string> Of(Action<Stream> render, IReadOnlySet<int> wanted)
        {
            var capture = new LineCapture(wanted);
            try { render(capture); }
            catch (EndOfStreamException) { }   // every wanted line seen
            return capture._lines.ToDictionary(kv => kv.Key, kv => Encoding.UTF8.GetString(kv.Value.ToArray()));
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            while (!buffer.IsEmpty)
            {
                var newline = buffer.IndexOf((byte)'\n');
                var part = newline < 0 ? buffer : buffer[..newline];
                if (_wanted.Contains(_line))
                {
                    var line = _lines.TryGetValue(_line, out var l) ? l : _lines[_line] = [];
                    foreach (var b in part[..Math.Min(part.Length, Math.Max(0, MaxLine - line.Count))]) line.Add(b);
                }
                if (newline < 0) return;
                if (_line++ >= _last) throw new EndOfStreamException();
                buffer = buffer[(newline + 1)..];
            }
        }

    }
}

/// <summary>What one libnftables run returned: its status (0 = success) and its buffered output and errors.</summary>
internal readonly record struct NftOutcome(int Status, string Output, string Error);

/// <summary>
/// libnftables' C API (nftables 1.0.x: nft_ctx_new, nft_ctx_buffer_output/error, nft_run_cmd_from_*,
/// nft_ctx_free), resolved at run time so that a machine without the library falls back to the CLI.
/// </summary>
internal sealed unsafe class LibNftablesApi
{
    /// <summary>NFT_CTX_OUTPUT_JSON.</summary>
    public const uint OutputJson = 1 << 4;

    private static readonly Lock LoadLock = new();
    private static readonly Dictionary<string, (LibNftablesApi? Api, string? Why)> Loaded = new(StringComparer.Ordinal);

    /// <summary>
    /// One libnftables call at a time in the whole process: libnftables is not thread-safe (its first
    /// nft_ctx_new initialises process-wide state, and a context must never be used by two threads at once).
    /// </summary>
    public static readonly Lock Gate = new();

    // Called inside a namespace window, where no managed method may run: fields, not methods.
    internal readonly delegate* unmanaged<uint, nint> CtxNew;
    internal readonly delegate* unmanaged<nint, void> CtxFree;
    internal readonly delegate* unmanaged<nint, int> BufferOutput;
    internal readonly delegate* unmanaged<nint, int> BufferError;
    internal readonly delegate* unmanaged<nint, byte*> OutputBuffer;
    internal readonly delegate* unmanaged<nint, byte*> ErrorBuffer;
    internal readonly delegate* unmanaged<nint, uint, void> SetOutputFlags;
    internal readonly delegate* unmanaged<nint, byte*, int> RunBuffer;
    internal readonly delegate* unmanaged<nint, byte*, int> RunFile;

    public string Library { get; }

    private LibNftablesApi(string library, Func<string, nint> export)
    {
        Library = library;
        CtxNew = (delegate* unmanaged<uint, nint>)export("nft_ctx_new");
        CtxFree = (delegate* unmanaged<nint, void>)export("nft_ctx_free");
        BufferOutput = (delegate* unmanaged<nint, int>)export("nft_ctx_buffer_output");
        BufferError = (delegate* unmanaged<nint, int>)export("nft_ctx_buffer_error");
        OutputBuffer = (delegate* unmanaged<nint, byte*>)export("nft_ctx_get_output_buffer");
        ErrorBuffer = (delegate* unmanaged<nint, byte*>)export("nft_ctx_get_error_buffer");
        SetOutputFlags = (delegate* unmanaged<nint, uint, void>)export("nft_ctx_output_set_flags");
        RunBuffer = (delegate* unmanaged<nint, byte*, int>)export("nft_run_cmd_from_buffer");
        RunFile = (delegate* unmanaged<nint, byte*, int>)export("nft_run_cmd_from_filename");
    }

    private static readonly string[] Exports =
    [
        "nft_ctx_new", "nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_get_output_buffer",
        "nft_ctx_get_error_buffer", "nft_ctx_output_set_flags", "nft_run_cmd_from_buffer", "nft_run_cmd_from_filename",
    ];

    /// <summary>The library (a name dlopen resolves, or a path), or null and why not. Loaded once per name.</summary>
    public static LibNftablesApi? TryLoad(string library, out string? why)
    {
        lock (LoadLock)
        {
            if (!Loaded.TryGetValue(library, out var entry)) Loaded[library] = entry = Load(library);
            why = entry.Why;
            return entry.Api;
        }
    }

    private static (LibNftablesApi?, string?) Load(string library)
    {
        if (!NativeLibrary.TryLoad(library, out var handle)) return (null, $"{library} cannot be loaded");
        var missing = Exports.Where(e => !NativeLibrary.TryGetExport(handle, e, out _)).ToList();
        if (missing.Count > 0)
        {
            NativeLibrary.Free(handle);
            return (null, $"{library} has no {string.Join(", ", missing)}");
        }
        return (new LibNftablesApi(library, e => NativeLibrary.GetExport(handle, e)), null);
    }
}

/// <summary>
/// One namespace's libnftables context, kept between runs and freed when idle (see <see cref="NftLib"/>).
/// Runs on the caller's thread, which must be a thread of its own (it enters the namespace).
/// </summary>
internal sealed unsafe class NftSession(LibNftablesApi api, string? networkNamespace, TimeSpan linger)
{
    private nint _ctx;
    private ulong _identity; // the namespace _ctx was made in (NetworkNamespace.Identity)
    private Timer? _timer;
    private long _used;

    public NftOutcome Run(string input, bool file, uint outputFlags = 0)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(input) + 1];
        Encoding.UTF8.GetBytes(input, bytes);
        using (var window = networkNamespace is null ? null : NetworkNamespace.OpenWindow(networkNamespace))
        {
            var identity = NetworkNamespace.Identity(networkNamespace);
            lock (LibNftablesApi.Gate)
            {
                // A context made in a namespace since deleted (and perhaps made again under the name) would
                // program the dead one: free it, the window makes one in the namespace there is now.
                if (_ctx != 0 && identity != _identity)
                {
                    api.CtxFree(_ctx);
                    _ctx = 0;
                }
                _identity = identity;
                int status, failure, errno;
                fixed (byte* p = bytes)
                    status = Window(window is null ? -1 : (int)window.Target.DangerousGetHandle(), window is null ? -1 : (int)window.Own.DangerousGetHandle(), p, file ? 1 : 0, outputFlags, out failure, out errno);
                NetworkNamespace.Check(failure, errno, networkNamespace);
                if (failure == CallFailed) throw new NftException($"{api.Library}: nft_ctx_new failed or cannot buffer its output");
                // Reading a buffer also rewinds it for the next run.
                var outcome = new NftOutcome(status, Marshal.PtrToStringUTF8((nint)api.OutputBuffer(_ctx)) ?? "", Marshal.PtrToStringUTF8((nint)api.ErrorBuffer(_ctx)) ?? "");
                _used = System.Diagnostics.Stopwatch.GetTimestamp();
                _timer ??= new Timer(static state => ((NftSession)state!).OnIdle(), this, Timeout.Infinite, Timeout.Infinite);
                _timer.Change(linger, Timeout.InfiniteTimeSpan);
                return outcome;
            }
        }
    }

    /// <summary>A window's outcome besides <see cref="NetworkNamespace"/>'s own: no context could be made.</summary>
    private const int CallFailed = 3;

    /// <summary>In the namespace (if any) for native calls only: see <see cref="NetworkNamespace"/>. The caller holds the gate.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private int Window(int target, int own, byte* input, int file, uint outputFlags, out int failure, out int errno)
    {
        var setns = NetworkNamespace.SetNsFunction;
        var errnoLocation = NetworkNamespace.ErrnoFunction;
        var ctxNew = api.CtxNew;
        var ctxFree = api.CtxFree;
        var bufferOutput = api.BufferOutput;
        var bufferError = api.BufferError;
        var setOutputFlags = api.SetOutputFlags;
        var run = file != 0 ? api.RunFile : api.RunBuffer;
        var ctx = _ctx;
        failure = NetworkNamespace.NoFailure;
        errno = 0;
        if (target >= 0 && setns(target, NetworkNamespace.CloneNewNet) != 0)
        {
            failure = NetworkNamespace.EnterFailed;
            errno = *errnoLocation();
            return -1;
        }
        // ---- inside: native calls only ----
        var status = -1;
        if (ctx == 0)
        {
            // nft_ctx_new opens the context's netlink socket: in the namespace.
            ctx = ctxNew(0);
            if (ctx != 0 && (bufferOutput(ctx) != 0 || bufferError(ctx) != 0))
            {
                ctxFree(ctx);
                ctx = 0;
            }
        }
        if (ctx == 0)
        {
            failure = CallFailed;
        }
        else
        {
            setOutputFlags(ctx, outputFlags);
            status = run(ctx, input);
        }
        if (own >= 0 && setns(own, NetworkNamespace.CloneNewNet) != 0)
        {
            failure = NetworkNamespace.LeaveFailed;
            errno = *errnoLocation();
        }
        _ctx = ctx;
        return status;
    }

    /// <summary>Frees the context now, if there is one; the next run makes another.</summary>
    public void Close()
    {
        lock (LibNftablesApi.Gate)
        {
            _timer?.Change(Timeout.Infinite, Timeout.Infinite);
            if (_ctx == 0) return;
            api.CtxFree(_ctx);
            _ctx = 0;
        }
    }

    private void OnIdle()
    {
        lock (LibNftablesApi.Gate)
        {
            if (_ctx == 0) return;
            var idle = System.Diagnostics.Stopwatch.GetElapsedTime(_used);
            if (idle < linger) _timer?.Change(linger - idle, Timeout.InfiniteTimeSpan);
            else Close();
        }
    }
}

/// <summary>
/// A script rendered into memory (a memfd, close-on-exec) that libnftables then reads as the file
/// <c>/dev/fd/N</c>. Rendered first, read after: letting nft parse from a pipe while we rendered into
/// it made nft in our process 8–17 % slower than <c>nft -f</c> of the same script in 6 of 9 runs of the
/// 1,000-map first pass, rendering first was no worse (docs/performance.md); a file nft can reopen
/// lets it quote the offending line, and a script cut short by a failed or cancelled render never
/// reaches nft.
/// </summary>
internal sealed unsafe class ScriptFile : IDisposable
{
    private int _fd;

    private ScriptFile(int fd) => _fd = fd;

    public int Fd => _fd;

    public static ScriptFile Create()
    {
        return new ScriptFile(MemoryFile.Create("merlin-nft-script"));
    }

    /// <summary>Renders the script into the file; returns the bytes written.</summary>
    public long Write(Action<Stream> render, CancellationToken ct)
    {
        var stream = new Writer(_fd, ct);
        render(stream);
        return stream.Written;
    }

    public void Dispose()
    {
        var fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0) FileDescriptor.Close(fd);
    }

    private sealed class Writer(int fd, CancellationToken ct) : WriteOnlyStream
    {
        public long Written { get; private set; }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            ct.ThrowIfCancellationRequested();
            WriteAll(buffer);
        }

        private void WriteAll(ReadOnlySpan<byte> buffer)
        {
            while (!buffer.IsEmpty)
            {
                nint n;
                fixed (byte* p = buffer) n = FileDescriptor.Write(fd, p, (nuint)buffer.Length);
                if (n < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == Errno.EINTR) continue;
                    throw new IOException($"writing the script for libnftables: errno {errno}");
                }
                Written += n;
                buffer = buffer[(int)n..];
            }
        }

    }
}

/// <summary>
/// A resource opened on first use, kept between uses, and closed once it has been idle for
/// <c>linger</c> (or by <see cref="Close"/>). Every use, open and close happens under <c>gate</c>.
/// A resource whose use throws is closed, so the next use starts afresh.
/// </summary>
internal sealed class Kept<T>(Func<T> open, Action<T> close, TimeSpan linger, Lock gate, Func<ulong>? identity = null) : IDisposable where T : class
{
    private T? _value;
    private ulong _identity; // what identity() said when _value was opened
    private Timer? _timer;
    private long _used;

    public TResult Use<TResult>(Func<T, TResult> use)
    {
        lock (gate)
        {
            // Opened for something that is no longer there (a namespace made again under its name): reopen.
            var now = identity?.Invoke() ?? 0;
            if (_value is not null && now != _identity) Close();
            _identity = now;
            var value = _value ??= open();
            try
            {
                return use(value);
            }
            catch
            {
                Close();
                throw;
            }
            finally
            {
                _used = System.Diagnostics.Stopwatch.GetTimestamp();
                if (_value is not null)
                {
                    _timer ??= new Timer(static state => ((Kept<T>)state!).OnIdle(), this, Timeout.Infinite, Timeout.Infinite);
                    _timer.Change(linger, Timeout.InfiniteTimeSpan);
                }
            }
        }
    }

    /// <summary>Closes the resource now, if open; the next use opens it again.</summary>
    public void Close()
    {
        lock (gate)
        {
            _timer?.Change(Timeout.Infinite, Timeout.Infinite);
            if (_value is not { } value) return;
            _value = null;
            close(value);
        }
    }

    private void OnIdle()
    {
        lock (gate)
        {
            if (_value is null) return;
            var idle = System.Diagnostics.Stopwatch.GetElapsedTime(_used);
            if (idle < linger) _timer?.Change(linger - idle, Timeout.InfiniteTimeSpan);
            else Close();
        }
    }

    public void Dispose()
    {
        Close();
        lock (gate)
        {
            _timer?.Dispose();
            _timer = null;
        }
    }
}

/// <summary>A stream that is only written to, span by span: what a renderer writes into.</summary>
internal abstract class WriteOnlyStream : Stream
{
    public abstract override void Write(ReadOnlySpan<byte> buffer);
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
