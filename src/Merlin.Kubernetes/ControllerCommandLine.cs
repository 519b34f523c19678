using System.CommandLine;
using System.Net;
using Merlin.Client;
using Merlin.Kubernetes.Controller;
using Merlin.Kubernetes.Mapping;
using Merlin.Model;

namespace Merlin.Kubernetes;

/// <summary>Everything the command line asks for, checked.</summary>
public sealed record ControllerInvocation(
    string? Kubeconfig, ConnectionOptions Merlin, ControllerOptions Controller, LeaseOptions Lease, IPEndPoint Listen, string LogFormat);

/// <summary>merlin-k8s's flags. Every mistake is reported naming its flag (exit 2).</summary>
public sealed class ControllerCommandLine
{
    private readonly Option<string> _kubeconfig = new("--kubeconfig") { Description = "A kubeconfig file [default: in-cluster, else $KUBECONFIG or ~/.kube/config]", HelpName = "file" };
    private readonly Option<string> _api = new("--merlin-api") { Description = "Merlin's API, host[:port] — the load balancers' management VIP [default port: 4282]", Required = true, HelpName = "host[:port]" };
    private readonly Option<string> _ca = new("--merlin-ca") { Description = "Use TLS, and trust only this CA (PEM) for Merlin's certificate", HelpName = "file" };
    private readonly Option<string> _cert = new("--merlin-cert") { Description = "Use TLS, and show this client certificate (PEM, role admin)", HelpName = "file" };
    private readonly Option<string> _key = new("--merlin-key") { Description = "The client certificate's key (PEM) [default: in the --merlin-cert file]", HelpName = "file" };
    private readonly Option<string> _token = new("--merlin-token-file") { Description = "Send the bearer token in this file (only over TLS or to loopback)", HelpName = "file" };
    private readonly Option<string> _timeout = new("--merlin-timeout") { Description = "Deadline of each call to Merlin [default: 10s]", HelpName = "duration" };
    private readonly Option<bool> _defaultClass = new("--default-class") { Description = $"Also serve LoadBalancer Services that name no loadBalancerClass (besides {Annotations.LoadBalancerClass})" };
    private readonly Option<string> _drain = new("--drain-period") { Description = "How long a node leaving a Service keeps its open connections before it is removed [default: 30s]", HelpName = "duration" };
    private readonly Option<string> _nodeCheck = new("--node-health-check") { Description = "Health check of nodes for externalTrafficPolicy Cluster (\"\" for none) [default: http://:10256/healthz, kube-proxy's]", HelpName = "url" };
    private readonly Option<string> _period = new("--health-period") { Description = "Between node checks [default: 2s]", HelpName = "duration" };
    private readonly Option<string> _checkTimeout = new("--health-timeout") { Description = "Per node check, at most the period [default: 1s, or the period if shorter]", HelpName = "duration" };
    private readonly Option<string> _workers = new("--workers") { Description = "Services reconciled at once [default: 4]", HelpName = "n" };
    private readonly Option<string> _resync = new("--resync") { Description = "Reconcile every Service and re-read Merlin this often [default: 5m]", HelpName = "duration" };
    private readonly Option<string> _leaseNamespace = new("--lease-namespace") { Description = "Namespace of the leader Lease [default: $POD_NAMESPACE, else merlin-system]", HelpName = "ns" };
    private readonly Option<string> _leaseName = new("--lease-name") { Description = "Name of the leader Lease [default: merlin-k8s]", HelpName = "name" };
    private readonly Option<string> _identity = new("--identity") { Description = "This replica's name in the Lease [default: $POD_NAME, else the host name]", HelpName = "name" };
    private readonly Option<string> _listen = new("--listen") { Description = "Address of /healthz, /readyz and /metrics [default: 0.0.0.0:8080]", HelpName = "ip:port" };
    private readonly Option<string> _logFormat = new("--log-format") { Description = "text or json [default: text]", HelpName = "text|json" };

    public RootCommand Root { get; }

    public ControllerCommandLine()
    {
        Root = new RootCommand("merlin-k8s: gives Kubernetes Services of type LoadBalancer (class merlin.io/lb) addresses from IPPools and programs Merlin to balance them over the nodes");
        foreach (var o in new Option[] { _kubeconfig, _api, _ca, _cert, _key, _token, _timeout, _defaultClass, _drain, _nodeCheck, _period, _checkTimeout, _workers, _resync, _leaseNamespace, _leaseName, _identity, _listen, _logFormat })
            Root.Options.Add(o);
    }

    public ControllerInvocation? Bind(ParseResult r, out string? error)
    {
        try
        {
            error = null;
            return BindOrThrow(r);
        }
        catch (Exception e) when (e is OptionError or OptionValueException)
        {
            error = e.Message;
            return null;
        }
    }

    private ControllerInvocation BindOrThrow(ParseResult r)
    {
        if (!HostSpec.TryParseHostPort(r.GetValue(_api)!, 4282, out var host, out var port, out var hostError)) throw new OptionError($"--merlin-api: {hostError}");
        var timeout = Duration(r, _timeout, TimeSpan.FromSeconds(10), TimeSpan.FromMilliseconds(100));
        var (ca, cert, key, token) = (r.GetValue(_ca), r.GetValue(_cert), r.GetValue(_key), r.GetValue(_token));
        if (key is not null && cert is null) throw new OptionError("--merlin-key: needs --merlin-cert (the certificate it belongs to)");
        var tls = ca is not null || cert is not null ? new ClientTls(ca, cert, key) : null;
        if (token is not null && tls is null && !(IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip)))
            throw new OptionError("--merlin-token-file: a token is sent only over TLS or to loopback; add --merlin-ca");
        var merlin = new ConnectionOptions(host, port, timeout) { Tls = tls, TokenFile = token };

        var (period, checkTimeout) = OptionValues.HealthTiming(r.GetValue(_period), _period.Name, r.GetValue(_checkTimeout), _checkTimeout.Name);
        Uri? nodeCheck = HealthOptions.Default.ClusterCheck;
        if (r.GetValue(_nodeCheck) is { } checkText)
        {
            nodeCheck = null;
            if (checkText.Trim().Length > 0 && Validation.HealthEndpoint(checkText.Trim(), "--node-health-check", out nodeCheck) is { } bad)
                throw new OptionError(bad.ToString());
        }
        var workers = (int)UInt(r, _workers, 4, 1, 64);
        var controller = new ControllerOptions
        {
            DefaultClass = r.GetValue(_defaultClass),
            DrainPeriod = Duration(r, _drain, TimeSpan.FromSeconds(30), TimeSpan.Zero),
            Health = HealthOptions.Default with { ClusterCheck = nodeCheck, Period = period, Timeout = checkTimeout },
            Workers = workers,
            Resync = Duration(r, _resync, TimeSpan.FromMinutes(5), TimeSpan.FromSeconds(10)),
        };
        if (controller.DrainPeriod > Validation.MaxDrainPeriod) throw new OptionError($"--drain-period: longer than {Durations.Format(Validation.MaxDrainPeriod)}");

        var identity = r.GetValue(_identity) ?? Environment.GetEnvironmentVariable("POD_NAME") ?? Environment.MachineName;
        var lease = new LeaseOptions(
            r.GetValue(_leaseNamespace) ?? Environment.GetEnvironmentVariable("POD_NAMESPACE") ?? "merlin-system",
            r.GetValue(_leaseName) ?? "merlin-k8s",
            identity);
        controller = controller with { Identity = identity };

        var listenText = r.GetValue(_listen) ?? "0.0.0.0:8080";
        if (!IPEndPoint.TryParse(listenText, out var listen) || listen.Port == 0 && !listenText.EndsWith(":0", StringComparison.Ordinal))
            throw new OptionError($"--listen: {Validation.Quote(listenText)} is not ip:port");
        var logFormat = r.GetValue(_logFormat)?.Trim().ToLowerInvariant() ?? "text";
        if (logFormat is not ("text" or "json")) throw new OptionError($"--log-format: {Validation.Quote(logFormat)} is not text or json");
        var kubeconfig = r.GetValue(_kubeconfig);
        if (kubeconfig is not null && !File.Exists(kubeconfig)) throw new OptionError($"--kubeconfig: {kubeconfig} does not exist");
        return new ControllerInvocation(kubeconfig, merlin, controller, lease, listen, logFormat);
    }

    private static TimeSpan Duration(ParseResult r, Option<string> option, TimeSpan fallback, TimeSpan min) =>
        OptionValues.Duration(r.GetValue(option), option.Name, fallback, min);

    private static uint UInt(ParseResult r, Option<string> option, uint fallback, uint min, uint max) =>
        OptionValues.UInt(r.GetValue(option), option.Name, fallback, min, max);

    private sealed class OptionError(string message) : Exception(message);
}
