using System.Net;
using k8s.Models;

namespace Merlin.Kubernetes.Pools;

/// <summary>An IPPool as the allocator uses it: parsed, checked, with its selectors as predicates.</summary>
public sealed record IpPool(string Name, IReadOnlyList<AddressRange> Ranges)
{
    public bool AutoAssign { get; init; } = true;
    public bool AvoidBuggyIPs { get; init; }
    /// <summary>Empty: every namespace.</summary>
    public IReadOnlySet<string> Namespaces { get; init; } = new HashSet<string>();
    public LabelMatcher Selector { get; init; } = LabelMatcher.Everything;

    public bool Contains(IPAddress address) => Ranges.Any(r => r.Contains(address));

    public bool Serves(string @namespace, IReadOnlyDictionary<string, string> labels) =>
        (Namespaces.Count == 0 || Namespaces.Contains(@namespace)) && Selector.Matches(labels);

    /// <summary>Whether this address may be handed out by this pool (avoidBuggyIPs leaves out .0 and .255).</summary>
    public bool Usable(IPAddress address) =>
        !(AvoidBuggyIPs && address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork
          && address.GetAddressBytes()[3] is 0 or 255);

    /// <summary>The pool a resource describes, or the first thing wrong with it (naming the field).</summary>
    public static IpPool? Parse(string name, Kube.V1IPPoolSpec spec, out string? error)
    {
        var ranges = new List<AddressRange>();
        if (spec.Addresses is not { Count: > 0 }) { error = "spec.addresses: at least one CIDR or range is required"; return null; }
        for (var i = 0; i < spec.Addresses.Count; i++)
        {
            if (!AddressRange.TryParse(spec.Addresses[i], out var range, out var why)) { error = $"spec.addresses[{i}]: {why}"; return null; }
            var clash = ranges.FindIndex(r => r.Overlaps(range));
            if (clash >= 0) { error = $"spec.addresses[{i}]: {range} overlaps spec.addresses[{clash}] ({ranges[clash]})"; return null; }
            ranges.Add(range);
        }
        var selector = LabelMatcher.From(spec.ServiceSelector, "spec.serviceSelector", out error);
        if (selector is null) return null;
        var namespaces = new HashSet<string>(StringComparer.Ordinal);
        foreach (var ns in spec.Namespaces ?? [])
        {
            if (string.IsNullOrWhiteSpace(ns)) { error = "spec.namespaces: an entry is empty"; return null; }
            namespaces.Add(ns.Trim());
        }
        return new IpPool(name, ranges)
        {
            AutoAssign = spec.AutoAssign ?? true,
            AvoidBuggyIPs = spec.AvoidBuggyIPs ?? false,
            Namespaces = namespaces,
            Selector = selector,
        };
    }
}

/// <summary>A Kubernetes label selector (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist).</summary>
public sealed class LabelMatcher
{
    private readonly List<Func<IReadOnlyDictionary<string, string>, bool>> _terms = [];

    public static readonly LabelMatcher Everything = new();

    public bool Matches(IReadOnlyDictionary<string, string> labels) => _terms.All(t => t(labels));

    public static LabelMatcher? From(V1LabelSelector? selector, string field, out string? error)
    {
        error = null;
        if (selector is null) return Everything;
        var m = new LabelMatcher();
        foreach (var (key, value) in selector.MatchLabels ?? new Dictionary<string, string>())
            m._terms.Add(l => l.TryGetValue(key, out var v) && v == value);
        var expressions = selector.MatchExpressions ?? [];
        for (var i = 0; i < expressions.Count; i++)
        {
            var e = expressions[i];
            var values = (e.Values ?? []).ToHashSet(StringComparer.Ordinal);
            var key = e.Key;
            Func<IReadOnlyDictionary<string, string>, bool>? term = e.OperatorProperty switch
            {
                "In" when values.Count > 0 => l => l.TryGetValue(key, out var v) && values.Contains(v),
                "NotIn" when values.Count > 0 => l => !l.TryGetValue(key, out var v) || !values.Contains(v),
                "Exists" when values.Count == 0 => l => l.ContainsKey(key),
                "DoesNotExist" when values.Count == 0 => l => !l.ContainsKey(key),
                _ => null,
            };
            if (string.IsNullOrEmpty(key) || term is null)
            {
                error = $"{field}.matchExpressions[{i}]: {Merlin.Model.Validation.Quote(e.OperatorProperty)} with {values.Count} values is not In/NotIn (with values) or Exists/DoesNotExist (without)";
                return null;
            }
            m._terms.Add(term);
        }
        return m;
    }
}
