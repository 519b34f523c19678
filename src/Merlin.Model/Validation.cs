using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Merlin.Model;

/// <summary>
/// Field rules shared by every way a record enters Merlin (API, CLI, store read-back).
/// Each returns null when the value is acceptable, else the field and the reason.
/// </summary>
public static class Validation
{
    public const uint MaxWeight = int.MaxValue; // the kernel stores weights as a signed 32-bit int
    public const int MaxIdLength = 253;

    /// <summary>The most characters of a value an error message quotes.</summary>
    public const int MaxQuoted = 64;

    /// <summary>
    /// A value as error messages quote it: <c>"web"</c>, or a long one cut to its first <see cref="MaxQuoted"/>
    /// characters with its length, <c>"aaaa…" (71,728 characters)</c>. A message is sent back as a gRPC status
    /// header and written to logs: quoting a 70 KiB value whole made the .NET client fail the call as
    /// Unavailable and drop the connection other calls shared. Every message that quotes a value uses this.
    /// </summary>
    public static string Quote(string? value)
    {
        value ??= "";
        if (value.Length <= MaxQuoted) return $"\"{value}\"";
        var cut = char.IsHighSurrogate(value[MaxQuoted - 1]) ? MaxQuoted - 1 : MaxQuoted; // never half a character
        return $"\"{value[..cut]}…\" ({value.Length.ToString("N0", CultureInfo.InvariantCulture)} characters)";
    }

    public static ValidationError? Id(string? id, string field)
    {
        if (string.IsNullOrEmpty(id)) return new(field, "required");
        if (id.Length > MaxIdLength) return new(field, $"longer than {MaxIdLength} characters");
        // Ids are etcd key segments: a '/' would let svc "a" see servers of "a/b".
        foreach (var c in id)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or ':' or '@'))
                return new(field, $"{Validation.Quote(id)} may only contain letters, digits and - _ . : @");
        }
        return null;
    }

    public static ValidationError? Address(string? ip, string field, out IPAddress? address)
    {
        address = null;
        if (string.IsNullOrEmpty(ip)) return new(field, "required");
        if (!Endpoints.TryParseAddress(ip, out address)) return new(field, $"{Validation.Quote(ip)} is not an IPv4 or IPv6 address");
        if (IPAddress.Any.Equals(address) || IPAddress.IPv6Any.Equals(address)) return new(field, $"{Validation.Quote(ip)} is the unspecified address");
        return null;
    }

    /// <summary>The longest drain: a deadline further out is almost certainly a typo (300h for 300s).</summary>
    public static readonly TimeSpan MaxDrainPeriod = TimeSpan.FromDays(7);

    public static ValidationError? DrainPeriod(TimeSpan period, string field)
    {
        if (period <= TimeSpan.Zero) return new(field, $"{Durations.Format(period)}: a drain period must be more than 0 (to end a drain, undrain the server)");
        if (period > MaxDrainPeriod) return new(field, $"{Durations.Format(period)} is longer than the longest drain ({Durations.Format(MaxDrainPeriod)})");
        return null;
    }

    public static ValidationError? Port(uint port, string field)
    {
        if (port == 0) return new(field, "required (1-65535)");
        if (port > 65535) return new(field, $"{port} is out of range (1-65535)");
        return null;
    }

    public static ValidationError? Weight(uint weight, string field) =>
        weight > MaxWeight ? new(field, $"{weight} is out of range (0-{MaxWeight})") : null;

    public static ValidationError? SameFamily(IPAddress server, IpFamily serviceFamily, string field)
    {
        var family = server.AddressFamily == AddressFamily.InterNetworkV6 ? IpFamily.V6 : IpFamily.V4;
        return family == serviceFamily ? null
            : new(field, $"{server} is {Describe(family)} but the service is {Describe(serviceFamily)}");
    }

    public static ValidationError? PersistenceNetmask(uint bits, IpFamily family, string field)
    {
        var max = family == IpFamily.V6 ? 128u : 32u;
        return bits > max ? new(field, $"/{bits} is longer than an {Describe(family)} address (0-{max})") : null;
    }

    public static ValidationError? Thresholds(uint upper, uint lower, string field)
    {
        if (upper > MaxWeight) return new($"{field}.upper_threshold", $"{upper} is out of range (0-{MaxWeight})");
        if (lower > MaxWeight) return new($"{field}.lower_threshold", $"{lower} is out of range (0-{MaxWeight})");
        if (upper != 0 && lower > upper) return new($"{field}.lower_threshold", $"{lower} is above the upper threshold {upper}");
        return null;
    }

    /// <summary>Endpoint form of the original merlin: <c>&lt;scheme&gt;://:&lt;port&gt;/&lt;path&gt;</c>; the host is the real server.</summary>
    public static ValidationError? HealthEndpoint(string endpoint, string field, out Uri? uri)
    {
        uri = null;
        // Uri refuses an empty host, so put a placeholder host in to parse the rest.
        var schemeEnd = endpoint.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd <= 0) return new(field, $"{Validation.Quote(endpoint)} is not <scheme>://:<port>/<path> (e.g. http://:8080/health)");
        var scheme = endpoint[..schemeEnd].ToLowerInvariant();
        if (scheme is not ("http" or "https" or "tcp" or "grpc"))
            return new(field, $"scheme {Validation.Quote(scheme)} is not one of http, https, tcp, grpc");
        var rest = endpoint[(schemeEnd + 3)..];
        if (!rest.StartsWith(':')) return new(field, $"{Validation.Quote(endpoint)} must not name a host: the real server's own address is checked (e.g. {scheme}://:8080/health)");
        if (!Uri.TryCreate($"{scheme}://check.invalid{rest}", UriKind.Absolute, out var parsed))
            return new(field, $"{Validation.Quote(endpoint)} is not a valid URL");
        var portText = rest[1..].Split('/', '?')[0];
        if (!uint.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var p) || p is 0 or > 65535)
            return new(field, $"{Validation.Quote(endpoint)} needs a port from 1 to 65535");
        uri = parsed;
        return null;
    }

    /// <summary>The shortest health-check period: a shorter one probes a server many times a second for no better verdict.</summary>
    public static readonly TimeSpan MinHealthPeriod = TimeSpan.FromMilliseconds(100);

    /// <summary>The longest health-check period: a check an hour apart no longer tells whether a server is up.</summary>
    public static readonly TimeSpan MaxHealthPeriod = TimeSpan.FromHours(1);

    /// <summary>The shortest health-check timeout: no connect and answer completes sooner, so every check would fail.</summary>
    public static readonly TimeSpan MinHealthTimeout = TimeSpan.FromMilliseconds(1);

    public static ValidationError? HealthTiming(TimeSpan period, TimeSpan timeout, uint up, uint down, string field)
    {
        if (period <= TimeSpan.Zero) return new($"{field}.period", "required and must be positive when an endpoint is set");
        if (period < MinHealthPeriod) return new($"{field}.period", $"{Durations.Format(period)} is shorter than the shortest period ({Durations.Format(MinHealthPeriod)})");
        if (period > MaxHealthPeriod) return new($"{field}.period", $"{Durations.Format(period)} is longer than the longest period ({Durations.Format(MaxHealthPeriod)})");
        if (timeout <= TimeSpan.Zero) return new($"{field}.timeout", "required and must be positive when an endpoint is set");
        if (timeout < MinHealthTimeout) return new($"{field}.timeout", $"{Durations.Format(timeout)} is shorter than the shortest timeout ({Durations.Format(MinHealthTimeout)})");
        if (timeout > period) return new($"{field}.timeout", $"{timeout.TotalSeconds:0.###}s is longer than the period {period.TotalSeconds:0.###}s");
        if (up == 0) return new($"{field}.up_threshold", "required and must be > 0 when an endpoint is set");
        if (down == 0) return new($"{field}.down_threshold", "required and must be > 0 when an endpoint is set");
        return null;
    }

    private static string Describe(IpFamily family) => family == IpFamily.V6 ? "IPv6" : "IPv4";
}
