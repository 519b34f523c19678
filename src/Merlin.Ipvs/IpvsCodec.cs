using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Numerics;
using Merlin.Model;
using Merlin.Linux;
using K = Merlin.Ipvs.IpvsKernel;

namespace Merlin.Ipvs;

/// <summary>
/// IPVS requests and replies as bytes. Requests carry only NLM_F_REQUEST; the netlink client adds the ACK
/// or DUMP flag, the sequence number and the port id. Decoders read each attribute with the width the
/// kernel declares and raise <see cref="NetlinkDecodeException"/> on anything else.
/// </summary>
internal static class IpvsCodec
{
    private const int InetAddressLength = 16; // sizeof(union nf_inet_addr)

    // ---- requests ----------------------------------------------------------------------------------

    /// <summary>NEW_SERVICE / SET_SERVICE: the key and the full configuration (the kernel requires all of it).</summary>
    public static void WriteService(NetlinkBuffer buffer, ushort family, byte command, ServiceKey key, ServiceConfig config)
    {
        var w = new NetlinkWriter(buffer);
        var message = Begin(ref w, family, command);
        var service = w.BeginNested(K.CmdAttrService);
        WriteServiceKey(ref w, key);
        WriteServiceConfig(ref w, key, config);
        w.EndNested(service);
        w.EndMessage(message);
    }

    /// <summary>DEL_SERVICE, GET_SERVICE, ZERO: just the key.</summary>
    public static void WriteServiceKeyCommand(NetlinkBuffer buffer, ushort family, byte command, ServiceKey key)
    {
        var w = new NetlinkWriter(buffer);
        var message = Begin(ref w, family, command);
        var service = w.BeginNested(K.CmdAttrService);
        WriteServiceKey(ref w, key);
        w.EndNested(service);
        w.EndMessage(message);
    }

    /// <summary>NEW_DEST / SET_DEST (with <paramref name="config"/>), DEL_DEST (without).</summary>
    public static void WriteDestination(NetlinkBuffer buffer, ushort family, byte command, ServiceKey service, RealServerKey server, RealServerConfig? config)
    {
        var w = new NetlinkWriter(buffer);
        var message = Begin(ref w, family, command);
        var svc = w.BeginNested(K.CmdAttrService);
        WriteServiceKey(ref w, service);
        w.EndNested(svc);
        var dest = w.BeginNested(K.CmdAttrDest);
        var af = AddressFamilyOf(server.Address);
        w.WriteUInt16(K.DestAttrAddrFamily, af);
        WriteAddress(ref w, K.DestAttrAddr, server.Address);
        w.WriteUInt16BigEndian(K.DestAttrPort, server.Port);
        if (config is not null) WriteDestinationConfig(ref w, config);
        w.EndNested(dest);
        w.EndMessage(message);
    }

    /// <summary>A command with no attributes: FLUSH, GET_INFO, GET_CONFIG, ZERO (all services), or a dump of services.</summary>
    public static void WriteCommand(NetlinkBuffer buffer, ushort family, byte command)
    {
        var w = new NetlinkWriter(buffer);
        var message = Begin(ref w, family, command);
        w.EndMessage(message);
    }

    /// <summary>SET_CONFIG: each timeout that is not zero.</summary>
    public static void WriteSetTimeouts(NetlinkBuffer buffer, ushort family, IpvsTimeouts timeouts)
    {
        var w = new NetlinkWriter(buffer);
        var message = Begin(ref w, family, K.CmdSetConfig);
        WriteTimeout(ref w, K.CmdAttrTimeoutTcp, timeouts.Tcp, nameof(timeouts.Tcp));
        WriteTimeout(ref w, K.CmdAttrTimeoutTcpFin, timeouts.TcpFin, nameof(timeouts.TcpFin));
        WriteTimeout(ref w, K.CmdAttrTimeoutUdp, timeouts.Udp, nameof(timeouts.Udp));
        w.EndMessage(message);
    }

    private static MessageMark Begin(ref NetlinkWriter w, ushort family, byte command)
    {
        var message = w.BeginMessage(family, NetlinkFlags.Request);
        w.WriteGenericHeader(command, K.GenlVersion);
        return message;
    }

    private static void WriteServiceKey(ref NetlinkWriter w, ServiceKey key)
    {
        w.WriteUInt16(K.SvcAttrAf, key.Family == IpFamily.V6 ? K.AfInet6 : K.AfInet);
        if (key.IsFirewallMark)
        {
            // The kernel takes a fwmark service as TCP and ignores protocol, address and port.
            w.WriteUInt32(K.SvcAttrFwmark, key.FirewallMark);
            return;
        }
        if (key.Address is null) throw new ArgumentException($"service key (port {key.Port}, {key.Protocol}) has neither an address nor a firewall mark", nameof(key));
        if (AddressFamilyOf(key.Address) != (key.Family == IpFamily.V6 ? K.AfInet6 : K.AfInet))
            throw new ArgumentException($"service address {key.Address} is not of the key's family {key.Family}", nameof(key));
        w.WriteUInt16(K.SvcAttrProtocol, ProtocolNumber(key.Protocol));
        WriteAddress(ref w, K.SvcAttrAddr, key.Address);
        w.WriteUInt16BigEndian(K.SvcAttrPort, key.Port);
    }

    private static void WriteServiceConfig(ref NetlinkWriter w, ServiceKey key, ServiceConfig config)
    {
        var scheduler = config.Scheduler;
        if (scheduler.Length is 0 or > K.SchedNameMaxLength || !scheduler.All(char.IsAscii))
            throw new ArgumentException($"scheduler \"{scheduler}\" must be 1-{K.SchedNameMaxLength} ASCII characters", nameof(config));
        var schedulerBits = (uint)config.Flags;
        if ((schedulerBits & ~K.SvcFlagSchedMask) != 0)
            throw new ArgumentException($"scheduler flags 0x{schedulerBits:x} include bits other than IP_VS_SVC_F_SCHED1..3", nameof(config));

        var flags = schedulerBits;
        if (config.PersistenceTimeout != 0) flags |= K.SvcFlagPersistent;
        if (config.OnePacket) flags |= K.SvcFlagOnePacket;

        w.WriteString(K.SvcAttrSchedName, scheduler);
        // struct ip_vs_flags { flags, mask }: the kernel keeps the bits outside mask. An all-ones mask says
        // the whole flag word is ours, as ipvsadm does, so a stray bit set by someone else is cleared.
        Span<byte> ipvsFlags = stackalloc byte[8];
        BitConverter.TryWriteBytes(ipvsFlags, flags);
        BitConverter.TryWriteBytes(ipvsFlags[4..], uint.MaxValue);
        w.WriteBytes(K.SvcAttrFlags, ipvsFlags);
        w.WriteUInt32(K.SvcAttrTimeout, config.PersistenceTimeout);
        WriteNetmask(ref w, key.Family, config.PersistenceNetmask);
    }

    /// <summary>
    /// IPVS_SVC_ATTR_NETMASK is a __be32 mask for IPv4 (/24 is ff ff ff 00) but, for IPv6, the prefix
    /// length as a plain host-order integer (the kernel checks it is 1..128).
    /// </summary>
    private static void WriteNetmask(ref NetlinkWriter w, IpFamily family, byte prefix)
    {
        if (family == IpFamily.V6)
        {
            if (prefix > 128) throw new ArgumentOutOfRangeException(nameof(prefix), prefix, "an IPv6 persistence netmask is /0-/128");
            w.WriteUInt32(K.SvcAttrNetmask, prefix);
            return;
        }
        if (prefix > 32) throw new ArgumentOutOfRangeException(nameof(prefix), prefix, "an IPv4 persistence netmask is /0-/32");
        w.WriteUInt32BigEndian(K.SvcAttrNetmask, prefix == 0 ? 0u : uint.MaxValue << (32 - prefix));
    }

    private static void WriteDestinationConfig(ref NetlinkWriter w, RealServerConfig config)
    {
        if (config.Weight > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(config), config.Weight, $"weight {config.Weight} exceeds the kernel's maximum {int.MaxValue}");
        w.WriteUInt32(K.DestAttrFwdMethod, ForwardBits(config.Forward));
        w.WriteUInt32(K.DestAttrWeight, config.Weight);
        w.WriteUInt32(K.DestAttrUThresh, config.UpperThreshold);
        w.WriteUInt32(K.DestAttrLThresh, config.LowerThreshold);
        // Kernels before 5.2 have no tunnel attributes; send them only when they say something.
        if (config.TunnelType != TunnelType.Ipip)
        {
            if (config.TunnelType is not (TunnelType.Gue or TunnelType.Gre))
                throw new ArgumentOutOfRangeException(nameof(config), config.TunnelType, "unknown tunnel type");
            w.WriteUInt8(K.DestAttrTunType, (byte)config.TunnelType);
        }
        if (config.TunnelPort != 0) w.WriteUInt16BigEndian(K.DestAttrTunPort, config.TunnelPort);
        if (config.TunnelFlags != TunnelFlags.None)
        {
            if ((uint)config.TunnelFlags > ushort.MaxValue) throw new ArgumentOutOfRangeException(nameof(config), config.TunnelFlags, "tunnel flags are 16 bits");
            w.WriteUInt16(K.DestAttrTunFlags, (ushort)config.TunnelFlags);
        }
    }

    private static void WriteTimeout(ref NetlinkWriter w, ushort type, TimeSpan timeout, string name)
    {
        if (timeout == TimeSpan.Zero) return;
        if (timeout < TimeSpan.Zero || timeout.Ticks % TimeSpan.TicksPerSecond != 0 || timeout.TotalSeconds > int.MaxValue)
            throw new ArgumentOutOfRangeException(name, timeout, "an IPVS timeout is a whole number of seconds");
        w.WriteUInt32(type, (uint)timeout.TotalSeconds);
    }

    private static void WriteAddress(ref NetlinkWriter w, ushort type, IPAddress address)
    {
        // union nf_inet_addr: an IPv4 address in the first four bytes, the rest zero — what the kernel sends back.
        Span<byte> bytes = stackalloc byte[InetAddressLength];
        bytes.Clear();
        if (!address.TryWriteBytes(bytes, out _)) throw new ArgumentException($"{address} is not an IPv4 or IPv6 address");
        w.WriteBytes(type, bytes);
    }

    private static ushort AddressFamilyOf(IPAddress address) => address.AddressFamily switch
    {
        AddressFamily.InterNetwork => K.AfInet,
        AddressFamily.InterNetworkV6 => K.AfInet6,
        _ => throw new ArgumentException($"{address} is not an IPv4 or IPv6 address"),
    };

    internal static ushort ProtocolNumber(Protocol protocol) => protocol switch
    {
        Protocol.Tcp => K.IpProtoTcp,
        Protocol.Udp => K.IpProtoUdp,
        Protocol.Sctp => K.IpProtoSctp,
        _ => throw new ArgumentOutOfRangeException(nameof(protocol), protocol, "IPVS services are TCP, UDP or SCTP"),
    };

    internal static uint ForwardBits(ForwardMethod forward) => forward switch
    {
        ForwardMethod.Masq => K.ConnMasq,
        ForwardMethod.Tunnel => K.ConnTunnel,
        ForwardMethod.Route => K.ConnDirectRoute,
        _ => throw new ArgumentOutOfRangeException(nameof(forward), forward, "forwarding is masq, tunnel or route"),
    };

    // ---- replies -----------------------------------------------------------------------------------

    /// <summary>A NEW_SERVICE message (a GET_SERVICE answer or one entry of a dump).</summary>
    public static IpvsService DecodeServiceMessage(NetlinkMessage message)
    {
        var generic = message.ReadGeneric();
        ExpectCommand(generic, K.CmdNewService);
        IpvsService? service = null;
        foreach (var attribute in generic.Attributes)
        {
            if (attribute.Type == K.CmdAttrService) service = DecodeService(attribute.GetAttributes());
        }
        return service ?? Fail<IpvsService>("service message without IPVS_CMD_ATTR_SERVICE");
    }

    /// <summary>A NEW_DEST message (one entry of a destination dump) of a service of <paramref name="serviceFamily"/>.</summary>
    public static IpvsDestination DecodeDestinationMessage(NetlinkMessage message, IpFamily serviceFamily)
    {
        var generic = message.ReadGeneric();
        ExpectCommand(generic, K.CmdNewDest);
        IpvsDestination? destination = null;
        foreach (var attribute in generic.Attributes)
        {
            if (attribute.Type == K.CmdAttrDest) destination = DecodeDestination(attribute.GetAttributes(), serviceFamily);
        }
        return destination ?? Fail<IpvsDestination>("destination message without IPVS_CMD_ATTR_DEST");
    }

    public static IpvsService DecodeService(AttributeReader attributes)
    {
        ushort? af = null;
        ushort? protocol = null;
        ReadOnlySpan<byte> address = default;
        var hasAddress = false;
        ushort? port = null;
        uint fwmark = 0;
        string? scheduler = null;
        string? engine = null;
        uint flags = 0;
        uint timeout = 0;
        ReadOnlySpan<byte> netmask = default;
        var hasNetmask = false;
        IpvsStats? stats = null, stats64 = null;

        foreach (var a in attributes)
        {
            switch (a.Type)
            {
                case K.SvcAttrAf: af = a.GetUInt16(); break;
                case K.SvcAttrProtocol: protocol = a.GetUInt16(); break;
                case K.SvcAttrAddr: address = a.Payload; hasAddress = true; break;
                case K.SvcAttrPort: port = a.GetUInt16BigEndian(); break;
                case K.SvcAttrFwmark: fwmark = a.GetUInt32(); break;
                case K.SvcAttrSchedName: scheduler = a.GetString(); break;
                case K.SvcAttrPeName: engine = a.GetString(); break;
                case K.SvcAttrFlags:
                    if (a.Payload.Length != 8) Fail($"IPVS_SVC_ATTR_FLAGS is struct ip_vs_flags (8 bytes), got {a.Payload.Length}");
                    flags = BitConverter.ToUInt32(a.Payload); // the mask that follows is always ~0 in replies
                    break;
                case K.SvcAttrTimeout: timeout = a.GetUInt32(); break;
                case K.SvcAttrNetmask:
                    if (a.Payload.Length != 4) Fail($"IPVS_SVC_ATTR_NETMASK is 4 bytes, got {a.Payload.Length}");
                    netmask = a.Payload;
                    hasNetmask = true;
                    break;
                case K.SvcAttrStats: stats = DecodeStats(a.GetAttributes(), wide: false); break;
                case K.SvcAttrStats64: stats64 = DecodeStats(a.GetAttributes(), wide: true); break;
            }
        }

        var family = DecodeFamily(af ?? Fail<ushort>("service without IPVS_SVC_ATTR_AF"));
        ServiceKey key;
        if (fwmark != 0)
        {
            key = ServiceKey.ForFirewallMark(fwmark, family);
        }
        else
        {
            if (protocol is null || !hasAddress || port is null) Fail("service has neither a firewall mark nor protocol, address and port");
            key = ServiceKey.ForAddress(DecodeAddress(address, family, "IPVS_SVC_ATTR_ADDR"), port.Value, DecodeProtocol(protocol.Value));
        }

        byte prefix = family == IpFamily.V6 ? (byte)128 : (byte)32;
        if (hasNetmask)
        {
            if (family == IpFamily.V6)
            {
                var plen = BitConverter.ToUInt32(netmask);
                if (plen > 128) Fail($"IPv6 persistence prefix length {plen} is over 128");
                prefix = (byte)plen;
            }
            else
            {
                // Leading one bits. A mask with holes (ipvsadm accepts any dotted quad) reads as its prefix,
                // which then differs from any desired /n, so an owner rewrites it.
                prefix = (byte)BitOperations.LeadingZeroCount(~BinaryPrimitives.ReadUInt32BigEndian(netmask));
            }
        }

        var config = new ServiceConfig
        {
            Scheduler = scheduler ?? Fail<string>("service without IPVS_SVC_ATTR_SCHED_NAME"),
            Flags = (SchedulerFlags)(flags & K.SvcFlagSchedMask),
            PersistenceTimeout = (flags & K.SvcFlagPersistent) != 0 ? timeout : 0,
            PersistenceNetmask = prefix,
            OnePacket = (flags & K.SvcFlagOnePacket) != 0,
        };
        return new IpvsService(key, config) { PersistenceEngine = engine, Stats = stats64 ?? stats ?? default };
    }

    public static IpvsDestination DecodeDestination(AttributeReader attributes, IpFamily serviceFamily)
    {
        ReadOnlySpan<byte> address = default;
        var hasAddress = false;
        ushort? port = null;
        ushort? af = null;
        uint? forward = null;
        uint weight = 0, upper = 0, lower = 0, active = 0, inactive = 0, persistent = 0;
        byte tunnelType = 0;
        ushort tunnelPort = 0, tunnelFlags = 0;
        IpvsStats? stats = null, stats64 = null;

        foreach (var a in attributes)
        {
            switch (a.Type)
            {
                case K.DestAttrAddr: address = a.Payload; hasAddress = true; break;
                case K.DestAttrPort: port = a.GetUInt16BigEndian(); break;
                case K.DestAttrAddrFamily: af = a.GetUInt16(); break;
                case K.DestAttrFwdMethod: forward = a.GetUInt32(); break;
                case K.DestAttrWeight: weight = a.GetUInt32(); break;
                case K.DestAttrUThresh: upper = a.GetUInt32(); break;
                case K.DestAttrLThresh: lower = a.GetUInt32(); break;
                case K.DestAttrActiveConns: active = a.GetUInt32(); break;
                case K.DestAttrInactConns: inactive = a.GetUInt32(); break;
                case K.DestAttrPersistConns: persistent = a.GetUInt32(); break;
                case K.DestAttrTunType: tunnelType = a.GetUInt8(); break;
                case K.DestAttrTunPort: tunnelPort = a.GetUInt16BigEndian(); break;
                case K.DestAttrTunFlags: tunnelFlags = a.GetUInt16(); break;
                case K.DestAttrStats: stats = DecodeStats(a.GetAttributes(), wide: false); break;
                case K.DestAttrStats64: stats64 = DecodeStats(a.GetAttributes(), wide: true); break;
            }
        }

        if (!hasAddress || port is null) Fail("destination without address or port");
        // Kernels before 3.18 send no IPVS_DEST_ATTR_ADDR_FAMILY: the destination is then of the service's family.
        var family = af is { } f ? DecodeFamily(f) : serviceFamily;
        if (weight > int.MaxValue) Fail($"destination weight {weight} is over the kernel's maximum {int.MaxValue}");
        if (tunnelType > (byte)TunnelType.Gre) Fail($"tunnel type {tunnelType} is not ipip, gue or gre");

        var config = new RealServerConfig
        {
            Weight = weight,
            Forward = DecodeForward(forward ?? Fail<uint>("destination without IPVS_DEST_ATTR_FWD_METHOD")),
            TunnelType = (TunnelType)tunnelType,
            TunnelPort = tunnelPort,
            TunnelFlags = (TunnelFlags)tunnelFlags,
            UpperThreshold = upper,
            LowerThreshold = lower,
        };
        return new IpvsDestination(new RealServerKey(DecodeAddress(address, family, "IPVS_DEST_ATTR_ADDR"), port.Value), config)
        {
            ActiveConnections = active,
            InactiveConnections = inactive,
            PersistentConnections = persistent,
            Stats = stats64 ?? stats ?? default,
        };
    }

    /// <summary>
    /// IPVS_*_ATTR_STATS declares connections and packets as u32 and bytes as u64; STATS64 declares all
    /// of them u64. IPVS_STATS_ATTR_PAD (alignment for the u64s) and anything newer are skipped.
    /// </summary>
    public static IpvsStats DecodeStats(AttributeReader attributes, bool wide)
    {
        Span<ulong> v = stackalloc ulong[11];
        v.Clear();
        foreach (var a in attributes)
        {
            if (a.Type is < K.StatsConns or > K.StatsOutBps) continue;
            v[a.Type] = wide || a.Type is K.StatsInBytes or K.StatsOutBytes ? a.GetUInt64() : a.GetUInt32();
        }
        return new IpvsStats(v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]);
    }

    /// <summary>The SET_INFO reply to GET_INFO.</summary>
    public static IpvsInfo DecodeInfo(NetlinkMessage message)
    {
        var generic = message.ReadGeneric();
        ExpectCommand(generic, K.CmdSetInfo);
        uint? version = null, size = null;
        foreach (var a in generic.Attributes)
        {
            if (a.Type == K.InfoAttrVersion) version = a.GetUInt32();
            else if (a.Type == K.InfoAttrConnTabSize) size = a.GetUInt32();
        }
        if (version is null || size is null) Fail("IPVS info without version or connection table size");
        return new IpvsInfo(version.Value, size.Value);
    }

    /// <summary>The SET_CONFIG reply to GET_CONFIG.</summary>
    public static IpvsTimeouts DecodeTimeouts(NetlinkMessage message)
    {
        var generic = message.ReadGeneric();
        ExpectCommand(generic, K.CmdSetConfig);
        uint tcp = 0, fin = 0, udp = 0;
        foreach (var a in generic.Attributes)
        {
            switch (a.Type)
            {
                case K.CmdAttrTimeoutTcp: tcp = a.GetUInt32(); break;
                case K.CmdAttrTimeoutTcpFin: fin = a.GetUInt32(); break;
                case K.CmdAttrTimeoutUdp: udp = a.GetUInt32(); break;
            }
        }
        return new IpvsTimeouts(TimeSpan.FromSeconds(tcp), TimeSpan.FromSeconds(fin), TimeSpan.FromSeconds(udp));
    }

    private static IPAddress DecodeAddress(ReadOnlySpan<byte> bytes, IpFamily family, string name)
    {
        // The kernel sends the whole 16-byte union; accept exactly the address for IPv4 as well.
        if (family == IpFamily.V4)
        {
            if (bytes.Length is not (4 or InetAddressLength)) Fail($"{name}: {bytes.Length} bytes for an IPv4 address");
            return new IPAddress(bytes[..4]);
        }
        if (bytes.Length != InetAddressLength) Fail($"{name}: {bytes.Length} bytes for an IPv6 address");
        return new IPAddress(bytes);
    }

    private static IpFamily DecodeFamily(ushort af) => af switch
    {
        K.AfInet => IpFamily.V4,
        K.AfInet6 => IpFamily.V6,
        _ => Fail<IpFamily>($"address family {af} is neither AF_INET nor AF_INET6"),
    };

    private static Protocol DecodeProtocol(ushort protocol) => protocol switch
    {
        K.IpProtoTcp => Protocol.Tcp,
        K.IpProtoUdp => Protocol.Udp,
        K.IpProtoSctp => Protocol.Sctp,
        _ => Fail<Protocol>($"IP protocol {protocol} is not TCP, UDP or SCTP"),
    };

    private static ForwardMethod DecodeForward(uint bits) => (bits & K.ConnFwdMask) switch
    {
        K.ConnMasq => ForwardMethod.Masq,
        K.ConnTunnel => ForwardMethod.Tunnel,
        K.ConnDirectRoute => ForwardMethod.Route,
        var other => Fail<ForwardMethod>($"forwarding method {other} is not masq (0), tunnel (2) or route (3)"),
    };

    private static void ExpectCommand(GenericMessage message, byte command)
    {
        if (message.Command != command) Fail($"expected IPVS command {command}, got {message.Command}");
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Fail(string message) => throw new NetlinkDecodeException(message);

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static T Fail<T>(string message) => throw new NetlinkDecodeException(message);
}
