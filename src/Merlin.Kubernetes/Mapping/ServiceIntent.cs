using System.Net;
using System.Net.Sockets;
using k8s.Models;
using Merlin.Kubernetes.Pools;
using Merlin.Model;

namespace Merlin.Kubernetes.Mapping;

public enum Forwarding { Route, Nat }

/// <summary>One port of a Service: what clients reach on the VIP, and the node port NAT forwards to.</summary>
public sealed record ServicePortSpec(Protocol Protocol, ushort Port, ushort NodePort);

/// <summary>What a Service asks of Merlin, read from its spec and annotations and checked. Every rejection names the
/// field or annotation and the reason, for the Service's Events and condition.</summary>
public sealed record ServiceIntent(string Namespace, string Name)
{
    public string Key => $"{Namespace}/{Name}";
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();
    public IReadOnlyList<AddressFamily> Families { get; init; } = [AddressFamily.InterNetwork];
    public FamilyPolicy Policy { get; init; }
    public IReadOnlyList<IPAddress> RequestedAddresses { get; init; } = [];
    public string? Pool { get; init; }
    public string? SharingKey { get; init; }
    public IReadOnlyList<ServicePortSpec> Ports { get; init; } = [];
    public string Scheduler { get; init; } = "mh";
    public SchedulerFlags Flags { get; init; }
    public Forwarding Forwarding { get; init; }
    public bool LocalTraffic { get; init; }
    public ushort HealthCheckNodePort { get; init; }

    public Holder Holder => new(Key, SharingKey, Ports.Select(p => new PortKey(p.Protocol.ToString().ToUpperInvariant(), p.Port)).ToHashSet());

    public AllocationRequest AllocationRequest => new(Namespace, Labels, Families, Policy, RequestedAddresses, Pool, Holder);

    /// <summary>Whether this controller is to serve the Service: type LoadBalancer, and our class (or none, with
    /// <c>--default-class</c>). A Service being deleted still qualifies until its finalizer is gone.</summary>
    public static bool Qualifies(V1Service service, bool defaultClass) =>
        service.Spec?.Type == "LoadBalancer"
        && (service.Spec.LoadBalancerClass == Annotations.LoadBalancerClass || (defaultClass && service.Spec.LoadBalancerClass is null));

    public static ServiceIntent? Parse(V1Service service, out ValidationError? error)
    {
        error = null;
        var meta = service.Metadata;
        var spec = service.Spec;
        var annotations = meta.Annotations ?? new Dictionary<string, string>();
        string? Annotation(string name) => annotations.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v.Trim() : null;

        var families = new List<AddressFamily>();
        foreach (var f in spec.IpFamilies ?? [])
        {
            families.Add(f switch
            {
                "IPv4" => AddressFamily.InterNetwork,
                "IPv6" => AddressFamily.InterNetworkV6,
                _ => AddressFamily.Unknown,
            });
            if (families[^1] == AddressFamily.Unknown) { error = new("spec.ipFamilies", $"{Validation.Quote(f)} is not IPv4 or IPv6"); return null; }
        }
        if (families.Count == 0) families.Add(AddressFamily.InterNetwork);
        var policy = spec.IpFamilyPolicy switch
        {
            null or "SingleStack" => FamilyPolicy.SingleStack,
            "PreferDualStack" => FamilyPolicy.PreferDualStack,
            "RequireDualStack" => FamilyPolicy.RequireDualStack,
            var p => (FamilyPolicy)(-1),
        };
        if (!Enum.IsDefined(policy)) { error = new("spec.ipFamilyPolicy", $"{Validation.Quote(spec.IpFamilyPolicy)} is not SingleStack, PreferDualStack or RequireDualStack"); return null; }

        var requested = new List<IPAddress>();
        var (ipsField, ipsText) = Annotation(Annotations.Ips) is { } ips
            ? ($"annotation {Annotations.Ips}", ips)
            : ("spec.loadBalancerIP", string.IsNullOrWhiteSpace(spec.LoadBalancerIP) ? null : spec.LoadBalancerIP.Trim());
        foreach (var part in (ipsText ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!IPAddress.TryParse(part, out var a) || part.Contains('/') || part.Contains('%'))
            { error = new(ipsField, $"{Validation.Quote(part)} is not an IP address"); return null; }
            requested.Add(a);
        }

        var ports = new List<ServicePortSpec>();
        for (var i = 0; i < (spec.Ports?.Count ?? 0); i++)
        {
            var p = spec.Ports![i];
            var protocol = (p.Protocol ?? "TCP") switch
            {
                "TCP" => Protocol.Tcp,
                "UDP" => Protocol.Udp,
                "SCTP" => Protocol.Sctp,
                _ => (Protocol)0,
            };
            if (protocol == 0) { error = new($"spec.ports[{i}].protocol", $"{Validation.Quote(p.Protocol)} is not TCP, UDP or SCTP"); return null; }
            if (p.Port is < 1 or > 65535) { error = new($"spec.ports[{i}].port", $"{p.Port} is not a port (1-65535)"); return null; }
            ports.Add(new(protocol, (ushort)p.Port, (ushort)Math.Clamp(p.NodePort ?? 0, 0, 65535)));
        }
        if (ports.Count == 0) { error = new("spec.ports", "a LoadBalancer Service needs at least one port"); return null; }

        var schedulerText = Annotation(Annotations.Scheduler) ?? "mh";
        if (Schedulers.ParseScheduler(schedulerText, $"annotation {Annotations.Scheduler}", out var scheduler) is { } bad) { error = bad; return null; }
        var flagsText = Annotation(Annotations.Flags) ?? (scheduler == "mh" && Annotation(Annotations.Scheduler) is null ? "mh-port" : "");
        if (Schedulers.ParseFlags(scheduler, flagsText.Split(','), $"annotation {Annotations.Flags}", out var flags) is { } badFlags) { error = badFlags; return null; }

        var forwarding = (Annotation(Annotations.Forwarding) ?? "route").ToLowerInvariant() switch
        {
            "route" or "dsr" => Forwarding.Route,
            "nat" or "masq" => Forwarding.Nat,
            var f => (Forwarding)(-1),
        };
        if (!Enum.IsDefined(forwarding)) { error = new($"annotation {Annotations.Forwarding}", $"{Validation.Quote(Annotation(Annotations.Forwarding))} is not route or nat"); return null; }
        if (forwarding == Forwarding.Nat && ports.FirstOrDefault(p => p.NodePort == 0) is { } noNodePort)
        { error = new($"annotation {Annotations.Forwarding}", $"nat forwards to the node port, and port {noNodePort.Port} has none (spec.allocateLoadBalancerNodePorts is false?)"); return null; }

        var local = spec.ExternalTrafficPolicy == "Local";
        var healthPort = spec.HealthCheckNodePort ?? 0;
        if (local && healthPort is < 1 or > 65535) { error = new("spec.healthCheckNodePort", "externalTrafficPolicy Local needs the health check node port Kubernetes assigns"); return null; }

        var sharingKey = Annotation(Annotations.SharingKey);
        if (sharingKey is { Length: > 253 }) { error = new($"annotation {Annotations.SharingKey}", "longer than 253 characters"); return null; }
        return new ServiceIntent(meta.NamespaceProperty ?? "default", meta.Name)
        {
            Labels = new Dictionary<string, string>(meta.Labels ?? new Dictionary<string, string>()),
            Families = families,
            Policy = policy,
            RequestedAddresses = requested,
            Pool = Annotation(Annotations.Pool),
            SharingKey = sharingKey,
            Ports = ports,
            Scheduler = scheduler,
            Flags = flags,
            Forwarding = forwarding,
            LocalTraffic = local,
            HealthCheckNodePort = (ushort)(local ? healthPort : 0),
        };
    }
}
