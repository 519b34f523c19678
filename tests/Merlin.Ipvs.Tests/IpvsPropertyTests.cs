using System.Net;
using CsCheck;
using Merlin.Model;
using Merlin.Linux;

namespace Merlin.Ipvs.Tests;

/// <summary>
/// What we encode decodes to the same record (the request's service and destination nests carry the
/// same attributes the kernel sends back), and no byte string makes the IPVS decoders fail with anything
/// but <see cref="NetlinkDecodeException"/>.
/// </summary>
public class IpvsPropertyTests
{
    private static readonly Gen<IPAddress> V4 = Gen.UInt.Select(a => new IPAddress(BitConverter.GetBytes(a)));
    private static readonly Gen<IPAddress> V6 = Gen.Byte.Array[16].Select(b => new IPAddress(b));

    internal static readonly Gen<ServiceKey> Keys = Gen.OneOf(
        Gen.Select(V4, Gen.UShort, Gen.Enum<Protocol>(), (a, p, pr) => ServiceKey.ForAddress(a, p, pr)),
        Gen.Select(V6, Gen.UShort, Gen.Enum<Protocol>(), (a, p, pr) => ServiceKey.ForAddress(a, p, pr)),
        // The kernel takes every fwmark service as TCP, so that is the only fwmark key that can round-trip.
        Gen.Select(Gen.UInt[1, uint.MaxValue], Gen.Enum<IpFamily>(), (m, f) => ServiceKey.ForFirewallMark(m, f)));

    internal static Gen<ServiceConfig> Configs(IpFamily family) =>
        Gen.Select(Gen.OneOfConst([.. Schedulers.All]), Gen.Int[0, 7], Gen.OneOf(Gen.Const(0u), Gen.UInt[1, 86_400], Gen.UInt),
                Gen.Int[0, family == IpFamily.V6 ? 128 : 32], Gen.Bool,
            (s, flags, timeout, mask, onePacket) => new ServiceConfig
            {
                Scheduler = s, Flags = (SchedulerFlags)(flags << 3), PersistenceTimeout = timeout, PersistenceNetmask = (byte)mask, OnePacket = onePacket,
            });

    internal static readonly Gen<RealServerConfig> DestinationConfigs =
        Gen.Select(Gen.OneOf(Gen.UInt[0, 100], Gen.UInt[0, int.MaxValue], Gen.Const((uint)int.MaxValue)), Gen.Enum<ForwardMethod>(), Gen.Enum<TunnelType>(),
                Gen.UShort, Gen.Int[0, 3], Gen.UInt, Gen.UInt,
            (w, f, tt, tp, tf, u, l) => new RealServerConfig
            {
                Weight = w, Forward = f, TunnelType = tt, TunnelPort = tp, TunnelFlags = (TunnelFlags)tf, UpperThreshold = u, LowerThreshold = l,
            });

    private static IpvsService DecodeRequestService(byte[] request)
    {
        var reader = new NetlinkMessageReader(request);
        Assert.True(reader.TryRead(out var m));
        foreach (var a in m.ReadGeneric().Attributes)
            if (a.Type == IpvsKernel.CmdAttrService) return IpvsCodec.DecodeService(a.GetAttributes());
        throw new InvalidOperationException("no service nest");
    }

    private static IpvsDestination DecodeRequestDestination(byte[] request, IpFamily family)
    {
        var reader = new NetlinkMessageReader(request);
        Assert.True(reader.TryRead(out var m));
        foreach (var a in m.ReadGeneric().Attributes)
            if (a.Type == IpvsKernel.CmdAttrDest) return IpvsCodec.DecodeDestination(a.GetAttributes(), family);
        throw new InvalidOperationException("no destination nest");
    }

    private static byte[] Encode(Action<NetlinkBuffer> write)
    {
        using var buffer = new NetlinkBuffer();
        write(buffer);
        return buffer.WrittenSpan.ToArray();
    }

    [Fact]
    public void Service_EncodeThenDecode_IsTheSameService() =>
        Keys.SelectMany(k => Configs(k.Family).Select(c => (k, c))).Sample((key, config) =>
        {
            var bytes = Encode(b => IpvsCodec.WriteService(b, 0x22, IpvsKernel.CmdNewService, key, config));
            Assert.Equal(new IpvsService(key, config), DecodeRequestService(bytes));
        }, iter: 5_000);

    [Fact]
    public void Destination_EncodeThenDecode_IsTheSameDestination() =>
        Gen.Select(Keys, Gen.OneOf(V4, V6), Gen.UShort, DestinationConfigs).Sample((service, address, port, config) =>
        {
            var key = new RealServerKey(address, port);
            var bytes = Encode(b => IpvsCodec.WriteDestination(b, 0x22, IpvsKernel.CmdNewDest, service, key, config));
            Assert.Equal(new IpvsDestination(key, config), DecodeRequestDestination(bytes, service.Family));
        }, iter: 5_000);

    private static void DecodesOrRaisesDecodeException(byte[] message, bool destination)
    {
        try
        {
            var reader = new NetlinkMessageReader(message);
            while (reader.TryRead(out var m))
            {
                if (destination) IpvsCodec.DecodeDestinationMessage(m, IpFamily.V4);
                else IpvsCodec.DecodeServiceMessage(m);
            }
        }
        catch (NetlinkDecodeException)
        {
        }
    }

    [Fact]
    public void RandomAttributesInsideAnIpvsReply_DecodeOrRaiseDecodeException() =>
        Gen.Select(Gen.Byte.Array[0, 200], Gen.Bool).Sample((body, destination) =>
        {
            // A well-framed reply whose service / destination nest holds random bytes.
            var message = new Merlin.Linux.Tests.Wire().Message(0x22, 2, 1, 1).Genl(destination ? (byte)5 : (byte)1)
                .Nest(destination ? (ushort)2 : (ushort)1).Raw(body).End().End(message: true).ToArray();
            DecodesOrRaisesDecodeException(message, destination);
        }, iter: 20_000);

    [Fact]
    public void RandomWellFormedAttributes_DecodeOrRaiseDecodeException() =>
        // Valid framing, but every IPVS attribute type with random widths and contents.
        Gen.Select(Gen.Select(Gen.UShort[0, 16], Gen.Byte.Array[0, 20]).Array[0, 20], Gen.Bool).Sample((attributes, destination) =>
        {
            var w = new Merlin.Linux.Tests.Wire().Message(0x22, 2, 1, 1).Genl(destination ? (byte)5 : (byte)1).Nest(destination ? (ushort)2 : (ushort)1);
            foreach (var (type, payload) in attributes) w.Attr(type, payload);
            DecodesOrRaisesDecodeException(w.End().End(message: true).ToArray(), destination);
        }, iter: 20_000);

    [Fact]
    public void MutatedEncodings_DecodeOrRaiseDecodeException() =>
        Gen.Select(Keys, Gen.OneOf(V4, V6), DestinationConfigs, Gen.Int.Array[1, 6], Gen.Byte.Array[6]).Sample((service, address, config, positions, values) =>
        {
            var bytes = Encode(b => IpvsCodec.WriteDestination(b, 0x22, IpvsKernel.CmdNewDest, service, new RealServerKey(address, 80), config));
            for (var i = 0; i < positions.Length; i++) bytes[(int)((uint)positions[i] % (uint)bytes.Length)] = values[i];
            bytes[16] = 5; // keep the command a NEW_DEST so the decoder gets past it
            DecodesOrRaisesDecodeException(bytes, destination: true);
            for (var cut = 0; cut < bytes.Length; cut += 7) DecodesOrRaisesDecodeException(bytes[..cut], destination: true);
        }, iter: 5_000);
}
