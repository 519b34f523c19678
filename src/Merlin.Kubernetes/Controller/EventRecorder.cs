using System.Collections.Concurrent;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging;

namespace Merlin.Kubernetes.Controller;

/// <summary>Events on the objects users made, telling them why in words. The same reason and message on the same
/// object is told once, until something else is told of it (a reconcile repeated every few seconds must not flood
/// the namespace's events).</summary>
public sealed class EventRecorder(IKubernetes k, string component, string instance, ILogger log)
{
    private readonly ConcurrentDictionary<string, (string Reason, string Message)> _last = new(StringComparer.Ordinal);

    public long Recorded { get; private set; }

    public void Normal(IKubernetesObject<V1ObjectMeta> obj, string reason, string message) => _ = RecordAsync(obj, "Normal", reason, message);

    public void Warning(IKubernetesObject<V1ObjectMeta> obj, string reason, string message) => _ = RecordAsync(obj, "Warning", reason, message);

    /// <summary>Forget what was told of an object (it was deleted).</summary>
    public void Forget(string uid) => _last.TryRemove(uid, out _);

    private async Task RecordAsync(IKubernetesObject<V1ObjectMeta> obj, string type, string reason, string message)
    {
        var uid = obj.Metadata.Uid ?? $"{obj.Metadata.NamespaceProperty}/{obj.Metadata.Name}";
        var told = (reason, message);
        if (_last.TryGetValue(uid, out var last) && last == told) return;
        _last[uid] = told;
        var now = DateTime.UtcNow;
        var ns = obj.Metadata.NamespaceProperty ?? "default";
        var e = new Corev1Event
        {
            Metadata = new V1ObjectMeta { GenerateName = $"{obj.Metadata.Name}.", NamespaceProperty = ns },
            InvolvedObject = new V1ObjectReference
            {
                ApiVersion = obj.ApiVersion, Kind = obj.Kind, Name = obj.Metadata.Name, NamespaceProperty = obj.Metadata.NamespaceProperty,
                Uid = obj.Metadata.Uid, ResourceVersion = obj.Metadata.ResourceVersion,
            },
            Type = type,
            Reason = reason,
            Message = message,
            Source = new V1EventSource { Component = component },
            ReportingComponent = component,
            ReportingInstance = instance,
            FirstTimestamp = now,
            LastTimestamp = now,
            Count = 1,
        };
        try
        {
            await k.CoreV1.CreateNamespacedEventAsync(e, ns);
            Recorded++;
        }
        catch (Exception ex)
        {
            // An event is a courtesy: its loss is logged, never retried into a storm.
            log.LogWarning("Event {Reason} on {Object} not recorded: {Error}", reason, $"{ns}/{obj.Metadata.Name}", ex.Message);
        }
    }
}
