using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Merlin.Model;

/// <summary>Parsing and printing of <c>ip:port</c>, with IPv6 in brackets: <c>[2001:db8::1]:80</c>.</summary>
public static class Endpoints
{
    public static string Format(IPAddress address, ushort port) =>
        address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]:{port}" : $"{address}:{port}";

    public static bool TryParse(string text, [NotNullWhen(true)] out IPAddress? address, out ushort port, [NotNullWhen(false)] out string? error)
    {
        address = null; port = 0;
        text = text.Trim();
        string host, portText;
        if (text.StartsWith('['))
        {
            var close = text.IndexOf(']');
            if (close < 0 || close + 1 >= text.Length || text[close + 1] != ':')
            {
                error = $"{Validation.Quote(text)} is not ip:port (IPv6 is written [addr]:port)";
                return false;
            }
            host = text[1..close];
            portText = text[(close + 2)..];
        }
        else
        {
            var colon = text.LastIndexOf(':');
            if (colon < 0 || text.IndexOf(':') != colon)
            {
                error = $"{Validation.Quote(text)} is not ip:port (IPv6 is written [addr]:port)";
                return false;
            }
            host = text[..colon];
            portText = text[(colon + 1)..];
        }
        if (!TryParseAddress(host, out address))
        {
            error = $"{Validation.Quote(host)} is not an IPv4 or IPv6 address";
            return false;
        }
        if (!uint.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var p) || p is 0 or > 65535)
        {
            error = $"port {Validation.Quote(portText)} must be a number from 1 to 65535";
            return false;
        }
        port = (ushort)p;
        error = null;
        return true;
    }

    /// <summary>Strict address parse: IPAddress.TryParse alone accepts "1" or "1.2" as IPv4.</summary>
    public static bool TryParseAddress(string text, [NotNullWhen(true)] out IPAddress? address)
    {
        address = null;
        if (string.IsNullOrWhiteSpace(text) || text.Contains('%')) return false;
        if (!IPAddress.TryParse(text, out var parsed)) return false;
        if (parsed.AddressFamily == AddressFamily.InterNetwork && text.Count(c => c == '.') != 3) return false;
        if (parsed.AddressFamily == AddressFamily.InterNetworkV6 && !text.Contains(':')) return false;
        address = parsed;
        return true;
    }
}
