namespace Merlin.Kubernetes.Mapping;

/// <summary>The names this controller reads and writes on Kubernetes objects.</summary>
public static class Annotations
{
    public const string LoadBalancerClass = "merlin.io/lb";
    public const string Finalizer = "merlin.io/load-balancer";
    public const string Ips = "merlin.io/load-balancer-ips";
    public const string Pool = "merlin.io/pool";
    public const string SharingKey = "merlin.io/sharing-key";
    public const string Scheduler = "merlin.io/scheduler";
    public const string Flags = "merlin.io/flags";
    public const string Forwarding = "merlin.io/forwarding";
    /// <summary>The Service condition this controller owns.</summary>
    public const string ConditionType = "merlin.io/LoadBalancerReady";

    public const string ServiceNameLabel = "kubernetes.io/service-name";
    public const string ExcludeLabel = "node.kubernetes.io/exclude-from-external-load-balancers";
    public const string ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler";

    /// <summary>Merlin service ids this controller owns start with this; nothing else may use it.</summary>
    public const string IdPrefix = "k8s-";
}
