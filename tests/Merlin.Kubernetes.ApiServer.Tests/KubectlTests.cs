using k8s;
using k8s.Models;

namespace Merlin.Kubernetes.ApiServer.Tests;

/// <summary>Debian's kubectl, unchanged, against the test server: apply, get, re-apply, delete, a CRD's kind.</summary>
public sealed class KubectlTests : IAsyncLifetime
{
    private KubectlCluster? _cluster;
    private TestApiServer Api => _cluster!.Api;
    private Kubectl Kubectl => _cluster!.Kubectl;
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    const string Crd = """
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: ippools.merlin.io
        spec:
          group: merlin.io
          scope: Cluster
          names: {plural: ippools, singular: ippool, kind: IPPool, listKind: IPPoolList}
          versions:
          - name: v1
            served: true
            storage: true
            subresources: {status: {}}
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    properties:
                      cidrs: {type: array, items: {type: string}}
                  status:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
        """;

    static string Manifests(int port, string cidr) => $"""
        apiVersion: v1
        kind: Namespace
        metadata:
          name: merlin-demo
        ---
        {Crd}
        ---
        apiVersion: merlin.io/v1
        kind: IPPool
        metadata:
          name: default
        spec:
          cidrs: ["{cidr}"]
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: merlin-demo
          labels: {"{app: web}"}
        spec:
          type: LoadBalancer
          loadBalancerClass: merlin.io/lb
          selector: {"{app: web}"}
          ports:
          - name: http
            port: {port}
            targetPort: 8080
            protocol: TCP
        """;

    public async ValueTask InitializeAsync() => _cluster = await KubectlCluster.StartAsync(Ct);

    public async ValueTask DisposeAsync()
    {
        if (_cluster is not null) await _cluster.DisposeAsync();
    }

    [Fact]
    public async Task Apply_get_reapply_and_delete_manifests()
    {
        // As on a real cluster, the CRD goes first: kubectl maps every object of a file before applying any.
        Assert.Contains("customresourcedefinition.apiextensions.k8s.io/ippools.merlin.io created", await Kubectl.OkAsync("apply", "-f", Kubectl.File("crd.yaml", Crd)));
        var file = Kubectl.File("all.yaml", Manifests(80, "192.0.2.0/28"));
        var applied = await Kubectl.OkAsync("apply", "-f", file);
        Assert.Contains("namespace/merlin-demo created", applied);
        Assert.Contains("ippool.merlin.io/default created", applied);
        Assert.Contains("service/web created", applied);

        var yaml = await Kubectl.OkAsync("get", "svc", "web", "-n", "merlin-demo", "-o", "yaml");
        Assert.Contains("loadBalancerClass: merlin.io/lb", yaml);
        Assert.Contains("kubectl.kubernetes.io/last-applied-configuration", yaml);
        Assert.Contains("port: 80", yaml);

        var reapplied = await Kubectl.OkAsync("apply", "-f", Kubectl.File("all.yaml", Manifests(8443, "198.51.100.0/28")));
        Assert.Contains("service/web configured", reapplied);
        Assert.Contains("ippool.merlin.io/default configured", reapplied);
        Assert.Contains("namespace/merlin-demo unchanged", reapplied);
        var svc = Api.Get<V1Service>("v1", "Service", "merlin-demo", "web")!;
        Assert.Equal((8443, "http", 2L), (svc.Spec.Ports.Single().Port, svc.Spec.Ports.Single().Name, svc.Metadata.Generation!.Value));
        Assert.Equal("merlin.io/lb", svc.Spec.LoadBalancerClass);

        // kubectl get prints the server's table: the EXTERNAL-IP column shows what a controller wrote to status.
        Assert.Matches(@"(?m)^web\s+LoadBalancer\s+198\.19\.128\.\S+\s+<pending>\s+8443:3\d{4}/TCP\s", await Kubectl.OkAsync("get", "svc", "-n", "merlin-demo"));
        svc.Status = new V1ServiceStatus { LoadBalancer = new V1LoadBalancerStatus { Ingress = [new V1LoadBalancerIngress { Ip = "192.0.2.1", IpMode = "VIP" }] } };
        Api.Put(svc);
        Assert.Matches(@"(?m)^web\s+LoadBalancer\s+\S+\s+192\.0\.2\.1\s", await Kubectl.OkAsync("get", "svc", "web", "-n", "merlin-demo"));

        // kubectl get -w: watch events come back as table rows too.
        var watching = Kubectl.RunAsync("get", "svc", "-w", "-n", "merlin-demo", "--request-timeout=3s");
        await Task.Delay(1000, Ct);
        svc = Api.Get<V1Service>("v1", "Service", "merlin-demo", "web")!;
        svc.Status.LoadBalancer.Ingress[0].Ip = "192.0.2.2";
        Api.Put(svc);
        Assert.Matches(@"(?m)^web\s+LoadBalancer\s+\S+\s+192\.0\.2\.2\s", (await watching).Stdout);

        var pools = await Kubectl.OkAsync("get", "ippools");
        Assert.Matches(@"(?m)^default\s", pools);
        Assert.Contains("198.51.100.0/28", await Kubectl.OkAsync("get", "ippool", "default", "-o", "jsonpath={.spec.cidrs[0]}"));

        var deleted = await Kubectl.OkAsync("delete", "-f", file);
        Assert.Contains("service \"web\" deleted", deleted);
        Assert.Contains("ippool.merlin.io \"default\" deleted", deleted);
        Assert.Null(Api.Get<V1Service>("v1", "Service", "merlin-demo", "web"));
        Assert.Null(Api.Get<V1Namespace>("v1", "Namespace", null, "merlin-demo"));
        Assert.Null(Api.Get<V1CustomResourceDefinition>("apiextensions.k8s.io/v1", "CustomResourceDefinition", null, "ippools.merlin.io"));
    }

    [Fact]
    public async Task A_custom_resource_in_the_same_file_as_its_CRD_fails_the_first_apply_like_a_real_cluster()
    {
        var (code, stdout, stderr) = await Kubectl.RunAsync("apply", "-f", Kubectl.File("all.yaml", Manifests(80, "192.0.2.0/28")));
        Assert.NotEqual(0, code);
        Assert.Contains("ensure CRDs are installed first", stderr);
        Assert.Contains("service/web created", stdout);
        Assert.Contains("ippool.merlin.io/default created", await Kubectl.OkAsync("apply", "-f", Kubectl.File("all.yaml", Manifests(80, "192.0.2.0/28"))));
    }

    [Fact]
    public async Task Get_lists_and_discovery_short_names()
    {
        // kubectl's generators (create namespace, create service …) send protobuf, which this server refuses with 415.
        var (code, _, stderr) = await Kubectl.RunAsync("create", "namespace", "x");
        Assert.NotEqual(0, code);
        Assert.Contains("protobuf", stderr);
        await Kubectl.OkAsync("create", "-f", Kubectl.File("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"));
        Assert.Contains("service/a created", await Kubectl.OkAsync("create", "-f", Kubectl.File("svc.yaml", """
            apiVersion: v1
            kind: Service
            metadata: {name: a, namespace: x}
            spec:
              type: LoadBalancer
              ports: [{port: 80, targetPort: 8080}]
            """)));
        Assert.Matches(@"(?m)^a\s", await Kubectl.OkAsync("get", "svc", "-n", "x"));
        Assert.Matches(@"(?m)^x\s+a\s", await Kubectl.OkAsync("get", "services", "-A"));
        Assert.Contains("Server Version: v1.32", await Kubectl.OkAsync("version"));
        Assert.Contains("service/a labeled", await Kubectl.OkAsync("label", "svc", "a", "-n", "x", "tier=web"));
        Assert.Matches(@"(?m)^a\s", await Kubectl.OkAsync("get", "svc", "-n", "x", "-l", "tier in (web)"));
        Assert.Contains("service/a patched", await Kubectl.OkAsync("patch", "svc", "a", "-n", "x", "--type=merge", "-p", """{"spec":{"externalTrafficPolicy":"Local"}}"""));
        Assert.Equal("Local", Api.Get<V1Service>("v1", "Service", "x", "a")!.Spec.ExternalTrafficPolicy);
    }
}
