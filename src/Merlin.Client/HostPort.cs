using System.Globalization;
using Merlin.Model;

namespace Merlin.Client;

/// <summary>An API address as a person types it: <c>lb</c>, <c>lb:4282</c>, <c>198.18.0.10:4282</c>,
/// <c>[2001:db8::10]:4282</c>, <c>2001:db8::10</c> (the default port where none is given).</summary>
public static class HostPort
{
    public static bool TryParse(string text, ushort defaultPort, out string host, out ushort port, out string? error)
    {
        var t = text.Trim();
        string? portText = null;
        (host, port, error) = ("", 0, null);
        if (t.StartsWith('['))
        {
            var close = t.IndexOf(']');
            if (close < 0) { error = $"{Validation.Quote(text)} has no closing ]"; return false; }
            host = t[1..close];
            if (close + 1 < t.Length)
            {
                if (t[close + 1] != ':') { error = $"{Validation.Quote(text)}: expected :port after ]"; return false; }
                portText = t[(close + 2)..];
            }
        }
        else if (t.Count(c => c == ':') == 1)
        {
            var colon = t.IndexOf(':');
            (host, portText) = (t[..colon], t[(colon + 1)..]);
        }
        else
        {
            host = t;
        }
        if (host.Length == 0) { error = $"{Validation.Quote(text)} names no host"; return false; }
        if (portText is null) { port = defaultPort; return true; }
        if (!ushort.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port == 0)
        { error = $"{Validation.Quote(portText)} is not a port (1-65535)"; return false; }
        return true;
    }
}
