using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Merlin.Model;

namespace Merlin.Client;

/// <summary>
/// The <c>--host</c> value: a name or address, optionally with a port (<c>lb1:4282</c>, <c>[::1]:4282</c>);
/// the same as a URL (<c>https://lb1:4282</c>, <c>http://127.0.0.1:4282</c>); or the daemon's local
/// Unix socket (<c>unix:///run/merlin/merlin.sock</c>). The one parser of an API address: meradm's --host, the agent's
/// --api and the controller's --merlin-api.
/// </summary>
public sealed record HostSpec(string Host, ushort? Port)
{
    /// <summary><c>http</c> or <c>https</c> when the value was a URL; null for host[:port].</summary>
    public string? Scheme { get; init; }

    /// <summary>The socket path of a <c>unix://</c> value; Host and Port then mean nothing.</summary>
    public string? UnixSocket { get; init; }

    public const string UnixPrefix = "unix://";

    public static bool TryParse(string text, out HostSpec? spec, out string? error)
    {
        spec = null;
        var s = text.Trim();
        if (s.Length == 0)
        {
            error = $"{Validation.Quote(text)} names no host";
            return false;
        }
        if (s.StartsWith(UnixPrefix, StringComparison.OrdinalIgnoreCase))
        {
            var path = s[UnixPrefix.Length..];
            if (!path.StartsWith('/'))
            {
                error = $"{Validation.Quote(text)} needs an absolute socket path (unix:///run/merlin/merlin.sock)";
                return false;
            }
            spec = new HostSpec("localhost", null) { UnixSocket = path };
            error = null;
            return true;
        }
        string? scheme = null;
        foreach (var candidate in (string[])["http", "https"])
        {
            if (!s.StartsWith(candidate + "://", StringComparison.OrdinalIgnoreCase)) continue;
            scheme = candidate;
            s = s[(candidate.Length + 3)..].TrimEnd('/');
        }
        if (s.Contains("://"))
        {
            error = $"{Validation.Quote(text)} is not host[:port], http(s)://host[:port] or unix:///path";
            return false;
        }
        string host;
        string? portText = null;
        if (s.StartsWith('['))
        {
            var close = s.IndexOf(']');
            if (close < 0 || (close + 1 < s.Length && s[close + 1] != ':'))
            {
                error = $"{Validation.Quote(text)} is not a host ([IPv6] or [IPv6]:port)";
                return false;
            }
            host = s[1..close];
            if (close + 1 < s.Length) portText = s[(close + 2)..];
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                error = $"{Validation.Quote(host)} in brackets is not an IPv6 address";
                return false;
            }
        }
        else if (s.Count(c => c == ':') > 1)
        {
            // A bare IPv6 address: no port can be given without brackets.
            host = s;
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                error = $"{Validation.Quote(text)} is not a host (write IPv6 with a port as [addr]:port)";
                return false;
            }
        }
        else
        {
            var colon = s.IndexOf(':');
            host = colon < 0 ? s : s[..colon];
            if (colon >= 0) portText = s[(colon + 1)..];
            if (Uri.CheckHostName(host) is UriHostNameType.Unknown or UriHostNameType.IPv6)
            {
                error = $"{Validation.Quote(host)} is not a host name or address";
                return false;
            }
        }
        ushort? port = null;
        if (portText is not null)
        {
            if (!ushort.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var p) || p == 0)
            {
                error = $"{Validation.Quote(portText)} is not a port (1-65535) in {Validation.Quote(text)}";
                return false;
            }
            port = p;
        }
        spec = new HostSpec(host, port) { Scheme = scheme };
        error = null;
        return true;
    }

    /// <summary>
    /// An API address as host[:port] only (<c>lb</c>, <c>lb:4282</c>, <c>[2001:db8::10]:4282</c>), <paramref name="defaultPort"/>
    /// where none is given: for programs whose TLS comes from their own flags rather than a URL's scheme.
    /// </summary>
    public static bool TryParseHostPort(string text, ushort defaultPort, out string host, out ushort port, out string? error)
    {
        (host, port) = ("", 0);
        if (!TryParse(text, out var spec, out error)) return false;
        if (spec!.Scheme is not null || spec.UnixSocket is not null)
        {
            error = $"{Validation.Quote(text)} is not host[:port]";
            return false;
        }
        (host, port) = (spec.Host, spec.Port ?? defaultPort);
        return true;
    }
}
