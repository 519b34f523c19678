using Google.Protobuf;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Store.Protobuf;

/// <summary>
/// The store's records as protobuf: what the SQLite and etcd stores keep (the wire contract's
/// <c>types.VirtualService</c> / <c>types.RealServer</c>, byte for byte what a Go merlin reads and writes) and what
/// the API, which owns that contract, maps its requests to. Everything below the API sees only the model that
/// <see cref="StoredService.Service"/> and <see cref="StoredServer.Server"/> decode.
/// </summary>
public static class StoredRecords
{
    /// <summary>The record <paramref name="message"/> as the store keeps it (not copied: the caller gives it up).</summary>
    public static StoredService Of(Wire.VirtualService message) => new ProtobufService(message);

    /// <summary>
    /// Why <paramref name="server"/> cannot be a server of the service whose key identity (<see cref="Identity(Wire.VirtualService)"/>)
    /// is <paramref name="serviceIdentity"/>: its address is of the other family. Null when it can — a firewall-mark
    /// service, or a service or server without a valid address, takes either (what else is wrong is the API's to say).
    /// </summary>
    public static Merlin.Model.ValidationError? FamilyMismatch(string serviceIdentity, Wire.RealServer server)
    {
        if (serviceIdentity.Length == 0 || serviceIdentity.StartsWith("fwmark:", StringComparison.Ordinal)) return null;
        int first = serviceIdentity.IndexOf(':'), last = serviceIdentity.LastIndexOf(':');
        if (last <= first || !System.Net.IPAddress.TryParse(serviceIdentity.AsSpan(first + 1, last - first - 1), out var vip)) return null;
        if (!System.Net.IPAddress.TryParse(server.Key?.Ip, out var address)) return null;
        var family = vip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? Merlin.Model.IpFamily.V6 : Merlin.Model.IpFamily.V4;
        return Merlin.Model.Validation.SameFamily(address, family, "key.ip");
    }

    /// <inheritdoc cref="Of(Wire.VirtualService)"/>
    public static StoredServer Of(Wire.RealServer message) => new ProtobufServer(message);

    /// <inheritdoc cref="Of(Wire.VirtualService)"/>
    public static StoredSettings Of(Settings message) => new ProtobufSettings(message);

    /// <summary>The record itself (not a copy: change it only where the record is the caller's own, as a fresh List's).</summary>
    public static Wire.VirtualService Message(StoredService service) =>
        service is ProtobufService p ? p.Message : throw Foreign(service);

    /// <inheritdoc cref="Message(StoredService)"/>
    public static Wire.RealServer Message(StoredServer server) =>
        server is ProtobufServer p ? p.Message : throw Foreign(server);

    /// <inheritdoc cref="Message(StoredService)"/>
    public static Settings Message(StoredSettings settings) =>
        settings is ProtobufSettings p ? p.Message : throw Foreign(settings);

    public static StoredService DecodeService(ReadOnlySpan<byte> bytes) => Of(Wire.VirtualService.Parser.ParseFrom(bytes));

    public static StoredServer DecodeServer(ReadOnlySpan<byte> bytes) => Of(Wire.RealServer.Parser.ParseFrom(bytes));

    public static StoredSettings DecodeSettings(ReadOnlySpan<byte> bytes) => Of(Settings.Parser.ParseFrom(bytes));

    /// <summary>The bytes the store keeps for the record: exactly those it was read from, or the API made.</summary>
    public static byte[] Encode(StoredService service) => Message(service).ToByteArray();

    /// <inheritdoc cref="Encode(StoredService)"/>
    public static byte[] Encode(StoredServer server) => Message(server).ToByteArray();

    /// <inheritdoc cref="Encode(StoredService)"/>
    public static byte[] Encode(StoredSettings settings) => Message(settings).ToByteArray();

    /// <summary>Identity of a service's key, used to refuse two services with the same ip:port:protocol or fwmark.</summary>
    public static string Identity(Wire.VirtualService service)
    {
        var k = service.Key;
        if (k is null) return "";
        if (k.Fwmark != 0) return $"fwmark:{k.Fwmark}:{(k.Family == AddressFamily.Inet6 ? 6 : 4)}";
        var ip = System.Net.IPAddress.TryParse(k.Ip, out var a) ? a.ToString() : k.Ip;
        return $"{(int)k.Protocol}:{ip}:{k.Port}";
    }

    /// <inheritdoc cref="Identity(Wire.VirtualService)"/>
    public static string Identity(StoredService service) => Identity(Message(service));

    private static ArgumentException Foreign(object record) =>
        new($"a {record.GetType().Name} not made by {nameof(StoredRecords)}: the protobuf stores keep only their own records", nameof(record));
}
