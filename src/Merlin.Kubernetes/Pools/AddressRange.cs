using System.Net;
using System.Net.Sockets;
using Merlin.Model;

namespace Merlin.Kubernetes.Pools;

/// <summary>Addresses as numbers, so ranges of either family are compared and walked the same way.</summary>
public static class AddressMath
{
    public static UInt128 ToNumber(IPAddress address)
    {
        var bytes = address.GetAddressBytes();
        UInt128 n = 0;
        foreach (var b in bytes) n = (n << 8) | b;
        return n;
    }

    public static IPAddress FromNumber(UInt128 n, AddressFamily family)
    {
        var bytes = new byte[family == AddressFamily.InterNetwork ? 4 : 16];
        for (var i = bytes.Length - 1; i >= 0; i--, n >>= 8) bytes[i] = (byte)(n & 0xFF);
        return new IPAddress(bytes);
    }

    public static string Name(AddressFamily family) => family == AddressFamily.InterNetwork ? "IPv4" : "IPv6";
}

/// <summary>An inclusive range of addresses of one family: a CIDR (<c>198.18.100.0/24</c>) or
/// <c>first-last</c> (<c>198.18.100.10-198.18.100.20</c>).</summary>
public readonly record struct AddressRange(AddressFamily Family, UInt128 First, UInt128 Last)
{
    /// <summary>How many addresses; saturates at <see cref="long.MaxValue"/> (an IPv6 /64 holds more).</summary>
    public long Count => Last - First >= (UInt128)long.MaxValue ? long.MaxValue : (long)(Last - First) + 1;

    public bool Contains(IPAddress address) =>
        address.AddressFamily == Family && AddressMath.ToNumber(address) is var n && n >= First && n <= Last;

    public bool Overlaps(AddressRange other) => Family == other.Family && First <= other.Last && other.First <= Last;

    public override string ToString() =>
        $"{AddressMath.FromNumber(First, Family)}-{AddressMath.FromNumber(Last, Family)}";

    public static bool TryParse(string? text, out AddressRange range, out string? error)
    {
        range = default;
        text = text?.Trim();
        if (string.IsNullOrEmpty(text)) { error = "is empty"; return false; }
        var slash = text.IndexOf('/');
        if (slash >= 0)
        {
            if (!IPAddress.TryParse(text[..slash], out var network) || network.ToString().Contains('%'))
            { error = $"{Validation.Quote(text)} is not a CIDR: {text[..slash]} is not an IP address"; return false; }
            var bits = network.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
            if (!int.TryParse(text[(slash + 1)..], out var prefix) || prefix < 0 || prefix > bits)
            { error = $"{Validation.Quote(text)} is not a CIDR: the prefix length must be 0-{bits}"; return false; }
            var host = bits - prefix;
            var mask = host == 128 ? UInt128.MaxValue : (UInt128.One << host) - 1;
            var first = AddressMath.ToNumber(network);
            if ((first & mask) != 0) { error = $"{Validation.Quote(text)} has host bits set (the network is {AddressMath.FromNumber(first & ~mask, network.AddressFamily)}/{prefix})"; return false; }
            range = new(network.AddressFamily, first, first | mask);
            error = null;
            return true;
        }
        var dash = text.IndexOf('-');
        if (dash < 0)
        {
            if (!IPAddress.TryParse(text, out var single)) { error = $"{Validation.Quote(text)} is not a CIDR, a range first-last or an address"; return false; }
            range = new(single.AddressFamily, AddressMath.ToNumber(single), AddressMath.ToNumber(single));
            error = null;
            return true;
        }
        if (!IPAddress.TryParse(text[..dash].Trim(), out var a) || !IPAddress.TryParse(text[(dash + 1)..].Trim(), out var b))
        { error = $"{Validation.Quote(text)} is not a range: both ends must be IP addresses"; return false; }
        if (a.AddressFamily != b.AddressFamily) { error = $"{Validation.Quote(text)} mixes IPv4 and IPv6"; return false; }
        var (lo, hi) = (AddressMath.ToNumber(a), AddressMath.ToNumber(b));
        if (lo > hi) { error = $"{Validation.Quote(text)} ends before it starts"; return false; }
        range = new(a.AddressFamily, lo, hi);
        error = null;
        return true;
    }
}
