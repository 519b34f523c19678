using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Merlin.Hashing;

/// <summary>
/// The part of a flow that the schedulers hash: the client's address and source port.
/// The address is kept as its big-endian numeric value (IPv4 in the low 32 bits), so a flow
/// is a small value type and a million of them cost no garbage.
/// </summary>
public readonly record struct FlowKey(UInt128 Address, bool IsIPv6, ushort Port)
{
    public static FlowKey V4(uint address, ushort port) => new(address, false, port);

    public static FlowKey From(IPAddress address, ushort port)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out int written)) throw new ArgumentException("address does not fit", nameof(address));
        return address.AddressFamily switch
        {
            AddressFamily.InterNetwork => new(BinaryPrimitives.ReadUInt32BigEndian(bytes), false, port),
            AddressFamily.InterNetworkV6 when written == 16 => new(BinaryPrimitives.ReadUInt128BigEndian(bytes), true, port),
            _ => throw new ArgumentException($"{address.AddressFamily} is not IPv4 or IPv6", nameof(address)),
        };
    }

    /// <summary>Parses "198.51.100.7:40000" or "[2001:db8::7]:40000".</summary>
    public static FlowKey Parse(string text)
    {
        if (!TryParse(text, out var flow, out var error)) throw new FormatException(error);
        return flow;
    }

    public static bool TryParse(string? text, out FlowKey flow, out string error)
    {
        flow = default;
        text = text?.Trim() ?? "";
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1) { error = $"\"{text}\" is not address:port"; return false; }
        var host = text[..colon];
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        else if (host.Contains(':')) { error = $"\"{text}\": write IPv6 addresses as [address]:port"; return false; }
        if (!IPAddress.TryParse(host, out var address)) { error = $"\"{host}\" is not an IPv4 or IPv6 address"; return false; }
        if (!ushort.TryParse(text[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port))
        { error = $"\"{text[(colon + 1)..]}\" is not a port (0 to 65535)"; return false; }
        flow = From(address, port);
        error = "";
        return true;
    }

    public IPAddress ToIPAddress()
    {
        Span<byte> bytes = stackalloc byte[16];
        if (IsIPv6) { BinaryPrimitives.WriteUInt128BigEndian(bytes, Address); return new IPAddress(bytes); }
        BinaryPrimitives.WriteUInt32BigEndian(bytes, (uint)Address);
        return new IPAddress(bytes[..4]);
    }

    /// <summary>
    /// <c>ntohl(addr_fold)</c> as IPVS computes it: the IPv4 address, or for IPv6 the XOR of the
    /// address's four 32-bit words (byte order commutes with XOR, so this is exact).
    /// </summary>
    public uint KernelFold => IsIPv6
        ? (uint)(Address >> 96) ^ (uint)(Address >> 64) ^ (uint)(Address >> 32) ^ (uint)Address
        : (uint)Address;

    /// <summary>
    /// The bytes nftables hashes for <c>ip saddr . th sport</c> (or <c>ip6 saddr . th sport</c>):
    /// each field starts on a 32-bit register boundary, so the 2-byte port is followed by two
    /// zero bytes. With <paramref name="includePort"/> false, just the address.
    /// Returns the length written (4, 8, 16 or 20).
    /// </summary>
    public int WriteNftKey(Span<byte> destination, bool includePort)
    {
        int n;
        if (IsIPv6) { BinaryPrimitives.WriteUInt128BigEndian(destination, Address); n = 16; }
        else { BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)Address); n = 4; }
        if (!includePort) return n;
        BinaryPrimitives.WriteUInt16BigEndian(destination[n..], Port);
        destination[n + 2] = 0;
        destination[n + 3] = 0;
        return n + 4;
    }

    public override string ToString() => IsIPv6
        ? $"[{ToIPAddress()}]:{Port.ToString(CultureInfo.InvariantCulture)}"
        : $"{ToIPAddress()}:{Port.ToString(CultureInfo.InvariantCulture)}";
}
