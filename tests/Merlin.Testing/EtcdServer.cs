using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Merlin.Testing;

/// <summary>
/// A real single-member etcd (Debian's <c>etcd</c> binary) on 127.0.0.1 with random free client and peer
/// ports and a temporary data dir. <see cref="Stop"/> kills it by its PID and <see cref="Start"/> brings it
/// back on the same ports and data, so tests can simulate an outage. <see cref="Dispose"/> stops it and
/// deletes the data dir. Call <see cref="Requires.Etcd"/> before <see cref="Launch"/> in a test.
/// </summary>
public sealed class EtcdServer : IDisposable
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(30);

    private readonly TempDir _dir;
    private readonly string _binary;
    private readonly StringBuilder _log = new();
    private Process? _process;
    private bool _disposed;

    private readonly string _name;
    private readonly string? _initialCluster;

    private EtcdServer(string binary, TempDir dir, int clientPort, int peerPort, string name = "merlin-test", string? initialCluster = null)
    {
        _binary = binary;
        _dir = dir;
        ClientPort = clientPort;
        PeerPort = peerPort;
        _name = name;
        _initialCluster = initialCluster;
        AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
    }

    /// <summary>A member of a cluster (<see cref="EtcdCluster"/>), not started: members start together, since none is healthy without a quorum.</summary>
    internal static EtcdServer Member(string name, int clientPort, int peerPort, string initialCluster) =>
        new(Requires.FindOnPath("etcd") ?? throw new InvalidOperationException("etcd is not on PATH (apt-get install etcd-server)"),
            new TempDir("etcd"), clientPort, peerPort, name, initialCluster);

    /// <summary>The member's name in its cluster.</summary>
    public string Name => _name;

    /// <summary>The peer URL, e.g. <c>http://127.0.0.1:40124</c>.</summary>
    public string PeerUrl => $"http://127.0.0.1:{PeerPort}";

    public int ClientPort { get; }
    public int PeerPort { get; }

    /// <summary>The client URL, e.g. <c>http://127.0.0.1:40123</c>.</summary>
    public string Endpoint => $"http://127.0.0.1:{ClientPort}";

    public string DataDir => System.IO.Path.Combine(_dir.Path, "data");

    /// <summary>The PID of the running etcd, or null while stopped.</summary>
    public int? Pid => _process is { HasExited: false } p ? p.Id : null;

    public bool IsRunning => Pid is not null;

    /// <summary>Starts a fresh etcd and waits until it answers on its client port.</summary>
    public static EtcdServer Launch()
    {
        var binary = Requires.FindOnPath("etcd") ?? throw new InvalidOperationException("etcd is not on PATH (apt-get install etcd-server)");
        Exception? last = null;
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var (client, peer) = FreePorts();
            var server = new EtcdServer(binary, new TempDir("etcd"), client, peer);
            try
            {
                server.Start();
                return server;
            }
            catch (Exception e)
            {
                // Most likely a port taken between choosing and binding it: try other ports.
                last = e;
                server.Dispose();
            }
        }
        throw new InvalidOperationException("etcd did not start after 3 attempts", last);
    }

    /// <summary>(Re)starts etcd on the same ports and data dir and waits until it is healthy.</summary>
    public void Start()
    {
        if (StartProcess() is { } process) WaitUntilHealthy(process);
    }

    /// <summary>Starts the etcd process without waiting for it; null if it was running.</summary>
    internal Process? StartProcess()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (IsRunning) return null;
        lock (_log) _log.Clear();
        var psi = new ProcessStartInfo(_binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("ETCD", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(key);
        var client = $"http://127.0.0.1:{ClientPort}";
        var peer = $"http://127.0.0.1:{PeerPort}";
        foreach (var arg in new[]
        {
            "--name", _name,
            "--data-dir", DataDir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", _initialCluster ?? $"{_name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
        }) psi.ArgumentList.Add(arg);

        var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;
        return process;
    }

    /// <summary>Kills etcd by its PID (SIGKILL, an abrupt outage) and waits for it to exit.</summary>
    public void Stop()
    {
        var process = _process;
        if (process is null) return;
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: false);
            process.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        process.Dispose();
        _process = null;
    }

    /// <summary>What etcd printed lately (for failure messages).</summary>
    public string Log
    {
        get
        {
            lock (_log) return _log.ToString();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        Stop();
        _dir.Dispose();
    }

    private void OnProcessExit(object? sender, EventArgs e) => Stop();

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_log)
        {
            if (_log.Length > 64 * 1024) _log.Remove(0, _log.Length - 32 * 1024);
            _log.AppendLine(line);
        }
    }

    /// <summary>Waits until this member answers healthy (for a cluster member: it sees a leader).</summary>
    internal void WaitUntilHealthy() => WaitUntilHealthy(_process ?? throw new InvalidOperationException($"etcd {_name} is not running"));

    private void WaitUntilHealthy(Process process)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < ReadyTimeout)
        {
            if (process.HasExited)
            {
                process.WaitForExit();
                var code = process.ExitCode;
                Stop();
                throw new InvalidOperationException($"etcd exited with code {code} before answering on {Endpoint}:\n{Log}");
            }
            try
            {
                using var resp = http.GetAsync($"{Endpoint}/health").GetAwaiter().GetResult();
                var body = resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                if (resp.IsSuccessStatusCode && body.Contains("\"health\":\"true\"", StringComparison.Ordinal)) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                // Not listening yet.
            }
            Thread.Sleep(50);
        }
        Stop();
        throw new TimeoutException($"etcd did not become healthy on {Endpoint} within {ReadyTimeout.TotalSeconds} s:\n{Log}");
    }

    private static (int Client, int Peer) FreePorts()
    {
        var a = new TcpListener(IPAddress.Loopback, 0);
        var b = new TcpListener(IPAddress.Loopback, 0);
        a.Start();
        b.Start();
        try
        {
            return (((IPEndPoint)a.LocalEndpoint).Port, ((IPEndPoint)b.LocalEndpoint).Port);
        }
        finally
        {
            a.Stop();
            b.Stop();
        }
    }
}
