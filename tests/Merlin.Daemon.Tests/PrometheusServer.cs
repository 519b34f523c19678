using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Merlin.Testing;

namespace Merlin.Daemon.Tests;

/// <summary>
/// A real Prometheus (Debian's <c>prometheus</c>) on a free loopback port with its own config and data in a temporary
/// directory, scraping the given targets every second and evaluating the given rule files. Disposing kills it by its
/// PID and deletes the directory.
/// </summary>
public sealed class PrometheusServer : IAsyncDisposable
{
    private readonly TempDir _dir;
    private readonly Process _process;
    private readonly StringBuilder _log = new();

    private PrometheusServer(TempDir dir, Process process, int port)
    {
        _dir = dir;
        _process = process;
        Port = port;
        Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(5) };
    }

    public int Port { get; }

    public HttpClient Http { get; }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public static async Task<PrometheusServer> StartAsync(IEnumerable<string> targets, IEnumerable<string> ruleFiles, CancellationToken ct)
    {
        var binary = Requires.FindOnPath("prometheus") ?? throw new InvalidOperationException("prometheus is not on PATH (apt-get install prometheus)");
        for (var attempt = 1; ; attempt++)
        {
            var dir = new TempDir("prometheus");
            var port = LocalPorts.Free();
            var config = new StringBuilder()
                .AppendLine("global: { scrape_interval: 1s, evaluation_interval: 1s }")
                .AppendLine($"rule_files: [{string.Join(", ", ruleFiles.Select(f => JsonSerializer.Serialize(f)))}]")
                .AppendLine("scrape_configs:")
                .AppendLine($"  - {{ job_name: merlin, static_configs: [{{ targets: [{string.Join(", ", targets.Select(t => JsonSerializer.Serialize(t)))}] }}] }}");
            await File.WriteAllTextAsync(dir.File("prometheus.yml"), config.ToString(), ct);
            var start = new ProcessStartInfo(binary)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
                WorkingDirectory = dir.Path,
            };
            foreach (var arg in new[]
            {
                $"--config.file={dir.File("prometheus.yml")}", $"--storage.tsdb.path={dir.File("data")}",
                $"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            }) start.ArgumentList.Add(arg);
            var process = new Process { StartInfo = start };
            var server = new PrometheusServer(dir, process, port);
            process.OutputDataReceived += (_, e) => server.Append(e.Data);
            process.ErrorDataReceived += (_, e) => server.Append(e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            if (await server.WaitReadyAsync(ct)) return server;
            var log = server.Log;
            await server.DisposeAsync();
            // A port taken between choosing and binding it: try another.
            if (attempt >= 3 || !log.Contains("address already in use", StringComparison.Ordinal))
                throw new InvalidOperationException($"prometheus did not start:\n{log}");
        }
    }

    private async Task<bool> WaitReadyAsync(CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (_process.HasExited) return false;
            try
            {
                using var ready = await Http.GetAsync("/-/ready", ct);
                if (ready.IsSuccessStatusCode) return true;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested) { }
            await Task.Delay(100, ct);
        }
        return false;
    }

    /// <summary>The result of an instant query (the <c>data</c> object), failing the test on an error.</summary>
    public async Task<JsonElement> QueryAsync(string promql, CancellationToken ct)
    {
        using var response = await Http.GetAsync($"/api/v1/query?query={Uri.EscapeDataString(promql)}", ct);
        var body = await response.Content.ReadAsStringAsync(ct);
        Assert.True(response.IsSuccessStatusCode, $"query {promql}: HTTP {(int)response.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.GetProperty("data").Clone();
    }

    public async Task<JsonElement> GetAsync(string path, CancellationToken ct)
    {
        var body = await Http.GetStringAsync(path, ct);
        return JsonDocument.Parse(body).RootElement.GetProperty("data").Clone();
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_log)
        {
            if (_log.Length > 64 * 1024) _log.Remove(0, _log.Length - 32 * 1024);
            _log.AppendLine(line);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: false); // this Prometheus only, by its PID
                using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                await _process.WaitForExitAsync(limit.Token);
            }
        }
        catch (Exception e) when (e is InvalidOperationException or OperationCanceledException) { }
        _process.Dispose();
        _dir.Dispose();
    }
}
