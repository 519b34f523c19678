using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Merlin.Testing;
using k8s;

namespace Merlin.Kubernetes.Tests.RealApiServer;

/// <summary>
/// A real Kubernetes control plane made of envtest's binaries (<c>etcd</c> and <c>kube-apiserver</c> from the
/// directory <c>KUBEBUILDER_ASSETS</c> names), as controller-runtime's envtest runs it: one etcd, one API server on a
/// secure port on 127.0.0.1 with a serving certificate from a CA made here, service-account keys, RBAC, and an admin
/// (group system:masters) that authenticates with a static token. Both processes are killed by their PIDs and the
/// temporary directory (certificates, token file, etcd data) removed on dispose. Every wait is bounded.
/// </summary>
public sealed class KubeApiServerProcess : IAsyncDisposable
{
    public const string AssetsVariable = "KUBEBUILDER_ASSETS";
    private const string AdminUser = "merlin-test-admin";
    private static readonly TimeSpan EtcdStartTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ApiServerStartTimeout = TimeSpan.FromSeconds(90);
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(10);

    private readonly TempDir _dir = new("kube-apiserver");
    private readonly string _token = Convert.ToHexString(RandomNumberGenerator.GetBytes(24)).ToLowerInvariant();
    private X509Certificate2? _ca;
    private OwnedProcess? _etcd;
    private OwnedProcess? _apiServer;

    private KubeApiServerProcess() { }

    /// <summary>https://127.0.0.1:&lt;secure port&gt;</summary>
    public Uri Url { get; private set; } = null!;

    /// <summary>The last lines etcd and kube-apiserver printed, for failure messages.</summary>
    public string Log => $"--- etcd ---\n{_etcd?.Tail}\n--- kube-apiserver ---\n{_apiServer?.Tail}";

    /// <summary>The admin's client configuration: the bearer token and the CA that signed the serving certificate.</summary>
    public KubernetesClientConfiguration ClientConfiguration() => new()
    {
        Host = Url.ToString(),
        AccessToken = _token,
        SslCaCerts = [X509CertificateLoader.LoadCertificate(_ca!.RawData)],
    };

    /// <summary>Starts etcd, then kube-apiserver, and returns once /readyz answers ok and the namespace
    /// <c>default</c> exists. A port taken between choosing and binding it is retried with other ports.</summary>
    public static async Task<KubeApiServerProcess> StartAsync(string assets, CancellationToken ct)
    {
        for (var attempt = 1; ; attempt++)
        {
            var plane = new KubeApiServerProcess();
            try
            {
                await plane.StartOnceAsync(assets, ct);
                return plane;
            }
            catch (Exception) when (attempt < 3 && plane.Log.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
            {
                await plane.DisposeAsync();
            }
            catch
            {
                await plane.DisposeAsync();
                throw;
            }
        }
    }

    private async Task StartOnceAsync(string assets, CancellationToken ct)
    {
        // etcd: client and peer URLs on loopback only, data in the temp dir.
        var etcdClient = $"http://127.0.0.1:{LocalPorts.Free()}";
        var etcdPeer = $"http://127.0.0.1:{LocalPorts.Free()}";
        _etcd = OwnedProcess.Start(Path.Combine(assets, "etcd"),
        [
            "--name", "merlin-test",
            "--data-dir", _dir.File("etcd"),
            "--listen-client-urls", etcdClient,
            "--advertise-client-urls", etcdClient,
            "--listen-peer-urls", etcdPeer,
            "--initial-advertise-peer-urls", etcdPeer,
            "--initial-cluster", $"merlin-test={etcdPeer}",
        ]);
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) })
            await WaitAsync(_etcd, "etcd", EtcdStartTimeout, async () =>
            {
                using var response = await http.GetAsync($"{etcdClient}/health", ct);
                return response.IsSuccessStatusCode && (await response.Content.ReadAsStringAsync(ct)).Contains("\"health\":\"true\"", StringComparison.Ordinal);
            }, ct);

        // kube-apiserver: serving certificate from our CA, service-account signing key, admin token, RBAC.
        var port = LocalPorts.Free();
        Url = new Uri($"https://127.0.0.1:{port}/");
        WriteCertificates();
        // A static token file row: token,user,uid,groups. system:masters may do anything, whatever the authorizer says.
        File.WriteAllText(_dir.File("tokens.csv"), $"{_token},{AdminUser},{AdminUser},system:masters\n");
        _apiServer = OwnedProcess.Start(Path.Combine(assets, "kube-apiserver"),
        [
            $"--etcd-servers={etcdClient}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            $"--secure-port={port}",
            $"--cert-dir={_dir.Path}",
            $"--tls-cert-file={_dir.File("apiserver.crt")}",
            $"--tls-private-key-file={_dir.File("apiserver.key")}",
            $"--token-auth-file={_dir.File("tokens.csv")}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=198.19.128.0/24",
            $"--service-account-issuer={Url}",
            $"--service-account-key-file={_dir.File("sa.pub")}",
            $"--service-account-signing-key-file={_dir.File("sa.key")}",
            // No controller-manager runs to make each namespace's default ServiceAccount, so don't require one.
            "--disable-admission-plugins=ServiceAccount",
        ]);
        using var client = AdminHttpClient();
        await WaitAsync(_apiServer, "kube-apiserver", ApiServerStartTimeout, async () =>
        {
            // /readyz is ok once every post-start hook (RBAC bootstrap, CRD informers, ...) has finished.
            using var ready = await client.GetAsync("readyz", ct);
            if (!ready.IsSuccessStatusCode) return false;
            // The API server makes the namespace default itself, shortly after it starts.
            using var ns = await client.GetAsync("api/v1/namespaces/default", ct);
            return ns.IsSuccessStatusCode;
        }, ct);
    }

    private void WriteCertificates()
    {
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=merlin-test-kube-ca", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        _ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(7));

        using var servingKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var serving = new CertificateRequest("CN=kube-apiserver", servingKey, HashAlgorithmName.SHA256);
        serving.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        serving.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        serving.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false)); // serverAuth
        serving.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_ca, true, false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        serving.CertificateExtensions.Add(san.Build());
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var servingCert = serving.Create(_ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(7), serial);
        File.WriteAllText(_dir.File("apiserver.crt"), servingCert.ExportCertificatePem());
        File.WriteAllText(_dir.File("apiserver.key"), servingKey.ExportPkcs8PrivateKeyPem());

        // Service-account tokens are signed with this key and verified with its public half (RSA, as envtest and kubeadm use).
        using var sa = RSA.Create(2048);
        File.WriteAllText(_dir.File("sa.key"), sa.ExportPkcs8PrivateKeyPem());
        File.WriteAllText(_dir.File("sa.pub"), sa.ExportSubjectPublicKeyInfoPem());
    }

    /// <summary>An HTTP client for the API server's own endpoints (/readyz): the admin token, and trust in our CA only.</summary>
    private HttpClient AdminHttpClient()
    {
        var ca = _ca!;
        var handler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0) return false;
                    using var chain = new X509Chain();
                    chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                    chain.ChainPolicy.CustomTrustStore.Add(ca);
                    chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                    using var leaf = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
                    return chain.Build(leaf);
                },
            },
        };
        var client = new HttpClient(handler) { BaseAddress = Url, Timeout = TimeSpan.FromSeconds(5) };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", _token);
        return client;
    }

    /// <summary>Polls <paramref name="ready"/> until true; fails at once if the process exits, and after <paramref name="timeout"/>.</summary>
    private async Task WaitAsync(OwnedProcess process, string name, TimeSpan timeout, Func<Task<bool>> ready, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        Exception? last = null;
        while (clock.Elapsed < timeout)
        {
            if (process.HasExited)
            {
                await process.DrainOutputAsync();
                throw new InvalidOperationException($"{name} exited with code {process.ExitCode} before it was ready; it printed:\n{process.Tail}");
            }
            try
            {
                if (await ready()) return;
                last = null;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
            {
                last = e; // not listening yet, or the TLS handshake failed (then the last error says why)
            }
            await Task.Delay(200, ct);
        }
        throw new TimeoutException($"{name} was not ready within {timeout.TotalSeconds} s (last error: {last?.Message ?? "none"}); it printed:\n{process.Tail}");
    }

    public async ValueTask DisposeAsync()
    {
        // The API server first, so it does not spend its last moments retrying a vanished etcd.
        if (_apiServer is not null) await _apiServer.StopAsync(StopTimeout);
        if (_etcd is not null) await _etcd.StopAsync(StopTimeout);
        _ca?.Dispose();
        _dir.Dispose();
    }

    /// <summary>A process this class started: its output kept (the last 64 KiB), stopped by its own PID only.</summary>
    private sealed class OwnedProcess
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();

        private OwnedProcess(Process process) => _process = process;

        public static OwnedProcess Start(string binary, string[] args)
        {
            var psi = new ProcessStartInfo(binary) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var arg in args) psi.ArgumentList.Add(arg);
            // etcd also reads its flags from ETCD_* variables; a stray one from the environment must not change this one.
            foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("ETCD", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(key);
            var owned = new OwnedProcess(new Process { StartInfo = psi });
            owned._process.OutputDataReceived += (_, e) => owned.Append(e.Data);
            owned._process.ErrorDataReceived += (_, e) => owned.Append(e.Data);
            owned._process.Start();
            owned._process.BeginOutputReadLine();
            owned._process.BeginErrorReadLine();
            return owned;
        }

        public bool HasExited => _process.HasExited;
        public int ExitCode => _process.ExitCode;

        public string Tail
        {
            get
            {
                lock (_output) return _output.Length > 8192 ? "..." + _output.ToString(_output.Length - 8192, 8192) : _output.ToString();
            }
        }

        /// <summary>After the process exited: waits (at most 5 s) until what it printed has been read.</summary>
        public async Task DrainOutputAsync()
        {
            using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try { await _process.WaitForExitAsync(bound.Token); }
            catch (OperationCanceledException) { }
        }

        /// <summary>SIGKILL to this PID (no process tree: neither binary forks), then a bounded wait for it to exit.</summary>
        public async Task StopAsync(TimeSpan timeout)
        {
            try
            {
                if (!_process.HasExited) _process.Kill(entireProcessTree: false);
                using var bound = new CancellationTokenSource(timeout);
                await _process.WaitForExitAsync(bound.Token);
            }
            catch (Exception e) when (e is InvalidOperationException or OperationCanceledException)
            {
                // Already gone, or did not exit within the bound: nothing more to do by PID.
            }
            _process.Dispose();
        }

        private void Append(string? line)
        {
            if (line is null) return;
            lock (_output)
            {
                if (_output.Length > 64 * 1024) _output.Remove(0, _output.Length - 32 * 1024);
                _output.AppendLine(line);
            }
        }
    }
}
