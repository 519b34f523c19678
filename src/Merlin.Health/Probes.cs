using System.Net;
using System.Net.Sockets;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Merlin.Linux;

namespace Merlin.Health;

/// <summary>The outcome of one check: healthy or not, and a short reason for logs and <c>meradm list</c>.</summary>
public readonly record struct ProbeResult(bool Healthy, string Detail);

/// <summary>Runs one check of one real server. Must not throw: a failure is an unhealthy result.</summary>
public interface IHealthProbe
{
    Task<ProbeResult> ProbeAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct);
}

/// <summary>
/// A probe that also takes checks in batches and reports each result through its request's
/// <see cref="ProbeCompletion"/> (on the probe's own thread) — no task per check. The scheduler uses it for
/// the endpoints it <see cref="Batches"/>.
/// </summary>
internal interface IBatchProbe
{
    bool Batches(Uri endpoint);
    void Submit(List<ProbeRequest> requests);

    /// <summary>
    /// The probe's own thread drives <paramref name="scheduler"/>: it asks for due checks when the last
    /// answer said they would be due, or after <see cref="Reschedule"/>, and waits for nothing else.
    /// </summary>
    void Attach(IProbeScheduler scheduler);
    void Detach(IProbeScheduler scheduler);
    void Reschedule();
}

/// <summary>A scheduler driven by a probe's thread (see <see cref="IBatchProbe.Attach"/>).</summary>
internal interface IProbeScheduler
{
    /// <summary>Adds the checks due now that the probe batches; returns how long until the next one is due (infinite: none).</summary>
    TimeSpan TakeDue(List<ProbeRequest> requests);
}

/// <summary>
/// The checks real servers declare: <c>http://:port/path</c> and <c>https://…</c> (a 2xx answer is healthy;
/// redirects are not followed; an HTTPS server's certificate is not verified — it is addressed by IP),
/// <c>tcp://:port</c> (a completed connect is healthy) and <c>grpc://:port[/service]</c> (the gRPC health
/// protocol answering SERVING). Connections are made from <see cref="NetworkNamespace"/> when set, which
/// is where the load balancer's dataplane is.
/// <para>
/// Plain HTTP goes through <see cref="HttpProbe"/> (non-blocking sockets on an event loop of its own; the
/// connection kept alive between checks unless <c>reuseHttpConnections</c> is false); HTTPS and gRPC through <see cref="HttpClient"/> with a
/// new connection per check.
/// </para>
/// </summary>
public sealed class HealthProbes : IHealthProbe, IBatchProbe, IDisposable
{
    private readonly string? _networkNamespace;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpClient _http;
    private readonly HttpProbe _plainHttp;

    public HealthProbes(string? networkNamespace = null, bool reuseHttpConnections = true)
    {
        _networkNamespace = networkNamespace;
        _plainHttp = new HttpProbe(networkNamespace, reuseHttpConnections);
        _handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseProxy = false,
            UseCookies = false,
            // Each check opens its own connection: a check must see a server that stopped accepting, not an old socket.
            PooledConnectionLifetime = TimeSpan.Zero,
            ConnectCallback = ConnectAsync,
            SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true },
        };
        _http = new HttpClient(_handler, disposeHandler: false) { Timeout = Timeout.InfiniteTimeSpan };
    }

    /// <summary>What a 2xx-only check accepts: the one rule for HTTP and HTTPS.</summary>
    internal static bool IsHealthyStatus(int code) => code is >= 200 and < 300;

    /// <summary>Plain-HTTP connections opened since start (the other HTTP checks reused one).</summary>
    public long HttpConnects => _plainHttp.Connects;

    public Task<ProbeResult> ProbeAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct) =>
        endpoint.Scheme == "http" ? _plainHttp.ProbeAsync(address, endpoint, timeout, ct) : ProbeOtherAsync(address, endpoint, timeout, ct);

    bool IBatchProbe.Batches(Uri endpoint) => endpoint.Scheme == "http";

    void IBatchProbe.Submit(List<ProbeRequest> requests) => _plainHttp.Submit(requests);

    void IBatchProbe.Attach(IProbeScheduler scheduler) => _plainHttp.Attach(scheduler);

    void IBatchProbe.Detach(IProbeScheduler scheduler) => _plainHttp.Detach(scheduler);

    void IBatchProbe.Reschedule() => _plainHttp.Reschedule();

    private async Task<ProbeResult> ProbeOtherAsync(IPAddress address, Uri endpoint, TimeSpan timeout, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        try
        {
            return endpoint.Scheme switch
            {
                "https" => await HttpAsync(address, endpoint, deadline.Token),
                "tcp" => await TcpAsync(address, endpoint.Port, deadline.Token),
                "grpc" => await GrpcAsync(address, endpoint, deadline.Token),
                _ => new ProbeResult(false, $"unknown scheme {endpoint.Scheme}"),
            };
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new ProbeResult(false, $"no answer within {timeout.TotalMilliseconds:0} ms");
        }
        catch (Exception e) when (e is HttpRequestException or SocketException or IOException or Grpc.Core.RpcException or InvalidOperationException)
        {
            return new ProbeResult(false, Describe(e));
        }
    }

    private async Task<ProbeResult> HttpAsync(IPAddress address, Uri endpoint, CancellationToken ct)
    {
        var url = new UriBuilder(endpoint) { Host = address.ToString() }.Uri;
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        request.Headers.ConnectionClose = true;
        request.Headers.UserAgent.ParseAdd("merlin-health-check");
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        var code = (int)response.StatusCode;
        return new ProbeResult(IsHealthyStatus(code), $"HTTP {code}");
    }

    private async Task<ProbeResult> TcpAsync(IPAddress address, int port, CancellationToken ct)
    {
        using var socket = NetworkNamespace.CreateSocket(_networkNamespace, address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(new IPEndPoint(address, port), ct);
        return new ProbeResult(true, "connected");
    }

    private async Task<ProbeResult> GrpcAsync(IPAddress address, Uri endpoint, CancellationToken ct)
    {
        var target = new UriBuilder("http", address.ToString(), endpoint.Port).Uri;
        using var channel = GrpcChannel.ForAddress(target, new GrpcChannelOptions { HttpHandler = _handler, DisposeHttpClient = false });
        var client = new Grpc.Health.V1.Health.HealthClient(channel);
        var reply = await client.CheckAsync(new HealthCheckRequest { Service = endpoint.AbsolutePath.Trim('/') }, cancellationToken: ct);
        return new ProbeResult(reply.Status == HealthCheckResponse.Types.ServingStatus.Serving, $"gRPC {reply.Status}");
    }

    /// <summary>
    /// Sockets for HTTPS and gRPC checks: made in the dataplane's namespace (on this thread, around socket(2)
    /// only), connected and spoken over from here — a socket keeps the namespace it was made in.
    /// </summary>
    private async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken ct)
    {
        var endpoint = context.DnsEndPoint;
        var address = IPAddress.Parse(endpoint.Host);
        var socket = NetworkNamespace.CreateSocket(_networkNamespace, address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.NoDelay = true;
            await socket.ConnectAsync(new IPEndPoint(address, endpoint.Port), ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static string Describe(Exception e)
    {
        var inner = e;
        while (inner.InnerException is not null) inner = inner.InnerException;
        return inner is SocketException s ? s.SocketErrorCode.ToString() : inner.Message;
    }

    public void Dispose()
    {
        _plainHttp.Dispose();
        _http.Dispose();
        _handler.Dispose();
    }
}
