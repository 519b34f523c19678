using System.Net.Sockets;

namespace Merlin.Model;

/// <summary>
/// What a Go merlin (v0.2.x, github.com/sky-uk/merlin) sharing the store can program, from a reading of its
/// source (it cannot be run here): the compatibility mode <see cref="Mode"/> refuses every record outside
/// this. Its reconciler calls log.Panicf on any kernel or conversion error and runs again after a restart,
/// so a record it cannot program takes down every Go node until the record is gone; a field it does not know
/// is kept (unknown protobuf fields survive its edits) but ignored, so a node it runs forwards differently.
/// Errors name the proto field, as the API's do.
/// </summary>
public static class GoMerlin
{
    /// <summary>The value of <c>Settings.compatibility</c> that turns the mode on.</summary>
    public const string Mode = "go-merlin";

    /// <summary>The Go merlin's health checker knows this scheme only; any other makes its reconciler panic.</summary>
    public const string HealthScheme = "http";

    public static ValidationError? Check(VirtualService service)
    {
        var key = service.Key;
        if (key.IsFirewallMark)
            return Refused("key.fwmark", "firewall-mark services are unknown to it (its reconciler would try to add ip \"\" port 0 on every pass and panic)");
        if (key.Protocol == Protocol.Sctp)
            return Refused("key.protocol", "SCTP is unknown to it (its reconciler panics: unknown protocol \"3\")");
        if (key.Family == IpFamily.V6)
            return Refused("key.ip", $"{key.Address} is IPv6, and it programs every service as IPv4");
        var c = service.Config;
        if (c.PersistenceTimeout != 0)
            return Refused("config.persistence_timeout", "it ignores persistence, so clients would stick to a server only on Merlin nodes");
        // 0 is unset (the API's clients, merlin-k8s among them, leave it out): a per-client default, as 32.
        if (c.PersistenceNetmask is not (0 or 32))
            return Refused("config.persistence_netmask", "it ignores persistence");
        if (c.OnePacket)
            return Refused("config.one_packet", "it ignores one-packet scheduling");
        return null;
    }

    public static ValidationError? Check(RealServer server)
    {
        if (server.Key.Address.AddressFamily == AddressFamily.InterNetworkV6)
            return Refused("key.ip", $"{server.Key.Address} is IPv6, and it programs every server as IPv4");
        var c = server.Config;
        if (c.Forward == ForwardMethod.Tunnel && c.TunnelType != TunnelType.Ipip)
            return Refused("config.tunnel_type", $"it programs every tunnel as IPIP, so a {c.TunnelType.ToString().ToUpperInvariant()} server would get packets it cannot decapsulate from Go nodes");
        if (c.TunnelFlags != TunnelFlags.None)
            return Refused("config.tunnel_flags", "it has no tunnel options");
        if (c.UpperThreshold != 0)
            return Refused("config.upper_threshold", "it ignores connection thresholds, so Go nodes would not limit the server");
        if (c.LowerThreshold != 0)
            return Refused("config.lower_threshold", "it ignores connection thresholds");
        if (server.HealthCheck.Endpoint is { } endpoint)
        {
            if (endpoint.Scheme != HealthScheme)
                return Refused("health_check.endpoint", $"its health checker knows http only, and a {endpoint.Scheme} check makes its reconciler panic");
            if (endpoint.Query.Length != 0)
                return Refused("health_check.endpoint", "its health checker drops the query, so it would check another URL");
        }
        if (server.DrainDeadline is not null)
            return Refused("drain_deadline", "it ignores drains and would keep sending new connections until the server is removed; set weight 0 instead (server edit -w 0) and delete the server later");
        return null;
    }

    /// <summary>
    /// Service ids one of which begins with the other (<c>web</c>, <c>web2</c>): the Go merlin lists a service's
    /// servers as every key under <c>servers/&lt;id&gt;</c> without the closing slash, so it programs
    /// <c>web2</c>'s servers into <c>web</c> too.
    /// </summary>
    public static ValidationError? CheckId(string id, IEnumerable<string> existingIds)
    {
        foreach (var other in existingIds)
        {
            if (other == id) continue;
            if (other.StartsWith(id, StringComparison.Ordinal) || id.StartsWith(other, StringComparison.Ordinal))
                return Refused("id", $"{Validation.Quote(id)} and the existing service {Validation.Quote(other)} begin alike, and it would give the shorter one the other's servers too");
        }
        return null;
    }

    private static ValidationError Refused(string field, string reason) =>
        new(field, $"compatibility mode {Mode} is on, and a Go merlin sharing the store cannot program this: {reason}");
}
