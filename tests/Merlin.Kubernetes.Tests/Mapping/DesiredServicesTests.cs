using System.Net;
using System.Net.Sockets;
using k8s.Models;
using Merlin.Kubernetes.Mapping;
using Merlin.Model;

namespace Merlin.Kubernetes.Tests.Mapping;

public class DesiredServicesTests
{
    internal static V1Service Service(string name = "web", string? etp = null, Dictionary<string, string>? annotations = null, params V1ServicePort[] ports) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "shop", Annotations = annotations, Uid = Guid.NewGuid().ToString() },
        Spec = new V1ServiceSpec
        {
            Type = "LoadBalancer",
            LoadBalancerClass = Annotations.LoadBalancerClass,
            ExternalTrafficPolicy = etp ?? "Cluster",
            HealthCheckNodePort = etp == "Local" ? 31999 : null,
            Ports = ports.Length > 0 ? ports : [new V1ServicePort { Port = 80, NodePort = 30080, Protocol = "TCP" }],
        },
    };

    internal static V1Node Node(string name, string ip, bool ready = true, string? ip6 = null, bool excluded = false, bool toBeDeleted = false) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = excluded ? new Dictionary<string, string> { [Annotations.ExcludeLabel] = "" } : null },
        Spec = new V1NodeSpec { Taints = toBeDeleted ? [new V1Taint { Key = Annotations.ToBeDeletedTaint, Effect = "NoSchedule" }] : null },
        Status = new V1NodeStatus
        {
            Addresses = [new V1NodeAddress { Type = "InternalIP", Address = ip }, .. ip6 is null ? Array.Empty<V1NodeAddress>() : [new V1NodeAddress { Type = "InternalIP", Address = ip6 }]],
            Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False" }],
        },
    };

    private static ServiceIntent Intent(V1Service svc) => ServiceIntent.Parse(svc, out var error) ?? throw new InvalidOperationException(error!.ToString());

    private static readonly IReadOnlyDictionary<(string, AddressFamily), int> NoEndpoints = new Dictionary<(string, AddressFamily), int>();

    [Fact]
    public void Build_ClusterPolicy_EveryUsableNodeWeightOne_DirectReturnOnTheServicePort()
    {
        var nodes = new[] { Node("n1", "198.18.1.1"), Node("n2", "198.18.1.2"), Node("n3", "198.18.1.3", ready: false), Node("n4", "198.18.1.4", excluded: true), Node("n5", "198.18.1.5", toBeDeleted: true) }
            .Select(NodeView.From);
        var desired = DesiredServices.Build(Intent(Service()), [IPAddress.Parse("198.18.100.1")], nodes, NoEndpoints, HealthOptions.Default);
        var d = Assert.Single(desired);
        Assert.Equal("k8s-shop.web.tcp-80", d.Service.Id);
        Assert.Equal("198.18.100.1:80/tcp", $"{d.Service.Key.Address}:{d.Service.Key.Port}/{d.Service.Key.Protocol.ToString().ToLowerInvariant()}");
        Assert.Equal("mh", d.Service.Config.Scheduler);
        Assert.Equal(["mh-port"], Schedulers.FlagNames("mh", d.Service.Config.Flags));
        Assert.Equal(["198.18.1.1:80", "198.18.1.2:80"], d.Servers.Select(s => s.Key.ToString()));
        Assert.All(d.Servers, s => Assert.Equal((1u, ForwardMethod.Route), (s.Config.Weight, s.Config.Forward)));
        Assert.All(d.Servers, s => Assert.Equal(10256, s.HealthCheck.Endpoint!.Port));
    }

    [Fact]
    public void Build_LocalPolicy_OnlyNodesWithReadyEndpoints_WeightedByTheirCount()
    {
        var slices = new[]
        {
            new V1EndpointSlice
            {
                AddressType = "IPv4",
                Endpoints =
                [
                    new V1Endpoint { Addresses = ["198.19.0.1"], NodeName = "n1" },
                    new V1Endpoint { Addresses = ["198.19.0.2"], NodeName = "n1", Conditions = new V1EndpointConditions { Ready = true } },
                    new V1Endpoint { Addresses = ["198.19.0.3"], NodeName = "n1" },
                    new V1Endpoint { Addresses = ["198.19.0.4"], NodeName = "n2" },
                    new V1Endpoint { Addresses = ["198.19.0.5"], NodeName = "n3", Conditions = new V1EndpointConditions { Ready = false } },
                ],
            },
        };
        var nodes = new[] { Node("n1", "198.18.1.1"), Node("n2", "198.18.1.2"), Node("n3", "198.18.1.3") }.Select(NodeView.From);
        var d = Assert.Single(DesiredServices.Build(Intent(Service(etp: "Local")), [IPAddress.Parse("198.18.100.1")], nodes, LocalEndpoints.Count(slices), HealthOptions.Default));
        Assert.Equal(["198.18.1.1:80=3", "198.18.1.2:80=1"], d.Servers.Select(s => $"{s.Key}={s.Config.Weight}"));
        Assert.All(d.Servers, s => Assert.Equal("http://check.invalid:31999/healthz", s.HealthCheck.Endpoint!.ToString()));
    }

    [Fact]
    public void Build_Nat_MasqueradesToTheNodePort()
    {
        var svc = Service(annotations: new() { [Annotations.Forwarding] = "nat" });
        var d = Assert.Single(DesiredServices.Build(Intent(svc), [IPAddress.Parse("198.18.100.1")], [NodeView.From(Node("n1", "198.18.1.1"))], NoEndpoints, HealthOptions.Default));
        var s = Assert.Single(d.Servers);
        Assert.Equal(("198.18.1.1:30080", ForwardMethod.Masq), (s.Key.ToString(), s.Config.Forward));
    }

    [Fact]
    public void Build_DualStack_OneMerlinServicePerFamilyAndPort_NodesOfThatFamily()
    {
        var svc = Service(ports: [new V1ServicePort { Port = 80, Protocol = "TCP", NodePort = 30080 }, new V1ServicePort { Port = 53, Protocol = "UDP", NodePort = 30053 }]);
        var nodes = new[] { Node("n1", "198.18.1.1", ip6: "2001:db8:1::1"), Node("n2", "198.18.1.2") }.Select(NodeView.From).ToList();
        var desired = DesiredServices.Build(Intent(svc), [IPAddress.Parse("198.18.100.1"), IPAddress.Parse("2001:db8::1")], nodes, NoEndpoints, HealthOptions.Default);
        Assert.Equal(["k8s-shop.web.tcp-80", "k8s-shop.web.udp-53", "k8s-shop.web.tcp-80.ipv6", "k8s-shop.web.udp-53.ipv6"], desired.Select(d => d.Service.Id));
        Assert.Equal(2, desired[0].Servers.Count);
        Assert.Equal("[2001:db8:1::1]:80", Assert.Single(desired[2].Servers).Key.ToString());
    }

    [Theory]
    [InlineData("k8s-shop.web.tcp-80", "shop/web")]
    [InlineData("k8s-shop.web.udp-53.ipv6", "shop/web")]
    [InlineData("web", null)]
    [InlineData("k8s-broken", null)]
    public void Owner_ReadsTheServiceBackFromAnId(string id, string? owner) => Assert.Equal(owner, DesiredServices.Owner(id));

    [Fact]
    public void Id_FitsTheStoresKeyRules_ForTheLongestNames()
    {
        var id = DesiredServices.Id(new string('n', 63), new string('s', 63), Protocol.Sctp, 65535, AddressFamily.InterNetworkV6);
        Assert.Null(Validation.Id(id, "id"));
    }

    [Theory]
    [InlineData(Annotations.Scheduler, "fancy", "annotation merlin.io/scheduler: \"fancy\" is not an IPVS scheduler")]
    [InlineData(Annotations.Flags, "sh-port", "annotation merlin.io/flags: \"sh-port\" is not a flag of this scheduler")]
    [InlineData(Annotations.Forwarding, "tunnel", "annotation merlin.io/forwarding: \"tunnel\" is not route or nat")]
    [InlineData(Annotations.Ips, "198.18.100.1,banana", "annotation merlin.io/load-balancer-ips: \"banana\" is not an IP address")]
    public void Parse_BadAnnotation_NamesItAndWhy(string annotation, string value, string expected)
    {
        Assert.Null(ServiceIntent.Parse(Service(annotations: new() { [annotation] = value }), out var error));
        Assert.StartsWith(expected, error!.ToString());
    }

    [Fact]
    public void Parse_SchedulerAnnotation_DropsTheDefaultFlag()
    {
        var intent = Intent(Service(annotations: new() { [Annotations.Scheduler] = "sh", [Annotations.Flags] = "sh-port" }));
        Assert.Equal("sh", intent.Scheduler);
        Assert.Equal(["sh-port"], Schedulers.FlagNames("sh", intent.Flags));
        Assert.Equal(SchedulerFlags.None, Intent(Service(annotations: new() { [Annotations.Scheduler] = "wrr" })).Flags);
    }

    [Theory]
    [InlineData("LoadBalancer", Annotations.LoadBalancerClass, false, true)]
    [InlineData("LoadBalancer", null, false, false)]
    [InlineData("LoadBalancer", null, true, true)]
    [InlineData("LoadBalancer", "other.io/lb", true, false)]
    [InlineData("ClusterIP", Annotations.LoadBalancerClass, true, false)]
    public void Qualifies_OnlyOurClass_OrNoneWithDefaultClass(string type, string? cls, bool defaultClass, bool expected)
    {
        var svc = Service();
        svc.Spec.Type = type;
        svc.Spec.LoadBalancerClass = cls;
        Assert.Equal(expected, ServiceIntent.Qualifies(svc, defaultClass));
    }

    [Fact]
    public void Parse_DeprecatedLoadBalancerIP_IsARequest_TheAnnotationWins()
    {
        var svc = Service();
        svc.Spec.LoadBalancerIP = "198.18.100.7";
        Assert.Equal("198.18.100.7", Intent(svc).RequestedAddresses.Single().ToString());
        svc.Metadata.Annotations = new Dictionary<string, string> { [Annotations.Ips] = "198.18.100.8, 2001:db8::8" };
        Assert.Equal(["198.18.100.8", "2001:db8::8"], Intent(svc).RequestedAddresses.Select(a => a.ToString()));
    }

    [Fact]
    public void Parse_NatWithoutNodePorts_IsRefused()
    {
        var svc = Service(annotations: new() { [Annotations.Forwarding] = "nat" }, ports: [new V1ServicePort { Port = 80, Protocol = "TCP" }]);
        Assert.Null(ServiceIntent.Parse(svc, out var error));
        Assert.Contains("has none (spec.allocateLoadBalancerNodePorts is false?)", error!.Reason);
    }
}
