using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;

namespace Merlin.Lab.Server;

/// <summary>A bad command line; the message says what to change. Exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Command-line arguments: positional words first (<c>client http</c>), then <c>--key value</c> pairs and
/// <c>--flag</c>s. Every command names the options it accepts, so a typo fails instead of being ignored.
/// </summary>
public sealed partial class Args
{
    private readonly Dictionary<string, string> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    private Args(IReadOnlyList<string> words) => Words = words;

    public IReadOnlyList<string> Words { get; }

    public static Args Parse(IReadOnlyList<string> argv)
    {
        var words = new List<string>();
        var i = 0;
        for (; i < argv.Count && !argv[i].StartsWith("--", StringComparison.Ordinal); i++) words.Add(argv[i]);
        var args = new Args(words);
        for (; i < argv.Count; i++)
        {
            var token = argv[i];
            if (!token.StartsWith("--", StringComparison.Ordinal) || token.Length == 2)
                throw new UsageException($"unexpected argument '{token}' (options look like --name value)");
            var key = token[2..];
            string value;
            var eq = key.IndexOf('=', StringComparison.Ordinal);
            if (eq >= 0)
            {
                value = key[(eq + 1)..];
                key = key[..eq];
            }
            else if (i + 1 < argv.Count && !argv[i + 1].StartsWith("--", StringComparison.Ordinal))
            {
                value = argv[++i];
            }
            else
            {
                value = "true";
            }
            if (!args._options.TryAdd(key, value)) throw new UsageException($"--{key} given twice");
        }
        return args;
    }

    /// <summary>Fails on any option that no Get* call asked for.</summary>
    public void RejectUnknown()
    {
        var unknown = _options.Keys.Where(k => !_used.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0) throw new UsageException($"unknown option(s): {string.Join(", ", unknown.Select(k => "--" + k))}");
    }

    public string? String(string key)
    {
        _used.Add(key);
        return _options.TryGetValue(key, out var v) ? v : null;
    }

    public string RequiredString(string key) => String(key) ?? throw new UsageException($"--{key} is required");

    public bool Flag(string key)
    {
        var v = String(key);
        return v switch
        {
            null => false,
            "true" or "1" or "yes" => true,
            "false" or "0" or "no" => false,
            _ => throw new UsageException($"--{key} takes no value (or true/false), got '{v}'"),
        };
    }

    public int Int(string key, int fallback, int min, int max)
    {
        var v = String(key);
        if (v is null) return fallback;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
            throw new UsageException($"--{key} must be a whole number from {min} to {max}, got '{v}'");
        return n;
    }

    public TimeSpan Duration(string key, TimeSpan fallback, TimeSpan max)
    {
        var v = String(key);
        if (v is null) return fallback;
        var d = ParseDuration(v) ?? throw new UsageException($"--{key} must be a duration like 200ms, 2s, 1.5m or 1h, got '{v}'");
        if (d > max) throw new UsageException($"--{key} may be at most {FormatDuration(max)}, got '{v}'");
        return d;
    }

    public IPEndPoint Endpoint(string key)
    {
        var v = RequiredString(key);
        return ParseEndpoint(v) ?? throw new UsageException($"--{key} must be address:port, e.g. 198.18.0.100:80 or [2001:db8::100]:80, got '{v}'");
    }

    public IPAddress? Address(string key)
    {
        var v = String(key);
        if (v is null) return null;
        return IPAddress.TryParse(v, out var a) ? a : throw new UsageException($"--{key} must be an IP address, got '{v}'");
    }

    /// <summary><c>40000-40999</c> → (40000, 40999).</summary>
    public (int First, int Last)? PortRange(string key)
    {
        var v = String(key);
        if (v is null) return null;
        var parts = v.Split('-');
        if (parts.Length == 2
            && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var a)
            && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var b)
            && a is >= 1 and <= 65535 && b >= a && b <= 65535)
            return (a, b);
        throw new UsageException($"--{key} must be a port range like 40000-40999, got '{v}'");
    }

    public static IPEndPoint? ParseEndpoint(string text)
    {
        if (!IPEndPoint.TryParse(text, out var ep) || ep.Port == 0) return null;
        // "2001:db8::1:80" parses as an address without a port: demand brackets for IPv6.
        if (ep.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !text.StartsWith('[')) return null;
        return ep;
    }

    public static TimeSpan? ParseDuration(string text)
    {
        var m = DurationPattern().Match(text.Trim());
        if (!m.Success) return null;
        var n = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        return m.Groups[2].Value switch
        {
            "ms" => TimeSpan.FromMilliseconds(n),
            "" or "s" => TimeSpan.FromSeconds(n),
            "m" => TimeSpan.FromMinutes(n),
            "h" => TimeSpan.FromHours(n),
            _ => null,
        };
    }

    public static string FormatDuration(TimeSpan d) =>
        d.TotalMilliseconds < 1000 ? $"{d.TotalMilliseconds:0}ms" : d.TotalSeconds < 120 ? $"{d.TotalSeconds:0.###}s" : $"{d.TotalMinutes:0.###}m";

    [GeneratedRegex(@"^(\d+(?:\.\d+)?)(ms|s|m|h)?$", RegexOptions.CultureInvariant)]
    private static partial Regex DurationPattern();
}
