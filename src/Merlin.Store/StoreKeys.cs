namespace Merlin.Store;

/// <summary>
/// The original merlin's key layout: <c>&lt;prefix&gt;/services/&lt;id&gt;</c> and
/// <c>&lt;prefix&gt;/servers/&lt;serviceID&gt;/&lt;ip&gt;:&lt;port&gt;</c> (IPv6 unbracketed, as the original wrote it).
/// </summary>
public static class StoreKeys
{
    public static string NormalizePrefix(string prefix)
    {
        prefix = prefix.TrimEnd('/');
        return prefix.StartsWith('/') ? prefix : "/" + prefix;
    }

    public static string Service(string prefix, string id) => $"{prefix}/services/{id}";

    public static string ServicesPrefix(string prefix) => $"{prefix}/services/";

    /// <summary>The trailing slash is the fix for the original's defect where svc1 saw svc10's servers.</summary>
    public static string ServersOf(string prefix, string serviceId) => $"{prefix}/servers/{serviceId}/";

    public static string ServersPrefix(string prefix) => $"{prefix}/servers/";

    /// <summary>
    /// Not under <c>services/</c> (the Go merlin parses every key there as a service) nor <c>servers/</c>; the Go
    /// merlin's watch of the whole prefix sees it change, which only makes it run a pass.
    /// </summary>
    public static string Settings(string prefix) => $"{prefix}/settings";

    /// <summary>
    /// A service's stored lookup table (<see cref="ServiceTableDeriver"/>): outside <c>services/</c> and
    /// <c>servers/</c>, which the Go merlin parses; its watch of the prefix only runs a pass.
    /// </summary>
    public static string Table(string prefix, string serviceId) => $"{prefix}/tables/{serviceId}";

    public static string TablesPrefix(string prefix) => $"{prefix}/tables/";

    /// <summary>
    /// Merlin's index of service keys: <c>&lt;prefix&gt;/service-keys/&lt;identity&gt;</c> → the id of the service that
    /// holds that ip:port:protocol (or fwmark), written in the transaction that writes the service, so a create
    /// proves its key unique by one compare. Outside <c>services/</c> and <c>servers/</c>: the Go merlin never reads it.
    /// </summary>
    public static string ServiceKeyIndex(string prefix, string identity) => $"{prefix}/service-keys/{identity}";

    public static string Server(string prefix, string serviceId, string ip, uint port) => $"{prefix}/servers/{serviceId}/{ip}:{port}";
}
