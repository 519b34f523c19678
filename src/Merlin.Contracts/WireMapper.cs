using Google.Protobuf.WellKnownTypes;
using Merlin.Model;

using Wire = Merlin.Contracts;

namespace Merlin.Contracts;

/// <summary>
/// Converts between the wire contract and the domain model. Reading from the wire validates:
/// every failure names the proto field path (e.g. <c>key.port</c>) and the reason.
/// </summary>
public static class WireMapper
{
    public static Model.VirtualService ToModel(VirtualService wire) =>
        TryToModel(wire, out var model) is { } error ? throw new ValidationException(error) : model!;

    public static ValidationError? TryToModel(VirtualService? wire, out Model.VirtualService? model)
    {
        model = null;
        if (wire is null) return new("service", "required");
        if (Validation.Id(wire.Id, "id") is { } idError) return idError;
        if (wire.Key is null) return new("key", "required (ip, port and protocol, or fwmark)");
        if (TryKey(wire.Key, out var key) is { } keyError) return keyError.Under("key");
        if (wire.Config is null) return new("config", "required (at least a scheduler)");
        if (TryConfig(wire.Config, key.Family, out var config) is { } configError) return configError.Under("config");
        model = new Model.VirtualService(wire.Id, key, config!);
        return null;
    }

    private static ValidationError? TryKey(VirtualService.Types.Key wire, out ServiceKey key)
    {
        key = default;
        var protocol = wire.Protocol switch
        {
            Wire.Protocol.Tcp => Model.Protocol.Tcp,
            Wire.Protocol.Udp => Model.Protocol.Udp,
            Wire.Protocol.Sctp => Model.Protocol.Sctp,
            Wire.Protocol.UnsetProtocol => (Model.Protocol?)null,
            _ => null,
        };
        if (wire.Fwmark != 0)
        {
            if (wire.Ip.Length != 0 || wire.Port != 0) return new("fwmark", "a firewall-mark service has no ip or port");
            var family = wire.Family == AddressFamily.Inet6 ? IpFamily.V6 : IpFamily.V4;
            // The kernel keys a fwmark service by mark alone and reports it as TCP; keep it TCP here
            // too, or a UDP fwmark service would never match what the kernel reads back.
            key = ServiceKey.ForFirewallMark(wire.Fwmark, family, Model.Protocol.Tcp);
            return null;
        }
        if (Validation.Address(wire.Ip, "ip", out var address) is { } ipError) return ipError;
        if (Validation.Port(wire.Port, "port") is { } portError) return portError;
        if (protocol is null)
        {
            return wire.Protocol == Wire.Protocol.UnsetProtocol
                ? new("protocol", "required (TCP, UDP or SCTP)")
                : new("protocol", $"{(int)wire.Protocol} is not a known protocol (TCP, UDP or SCTP)");
        }
        key = ServiceKey.ForAddress(address!, (ushort)wire.Port, protocol.Value);
        return null;
    }

    private static ValidationError? TryConfig(VirtualService.Types.Config wire, IpFamily family, out ServiceConfig? config)
    {
        config = null;
        if (Schedulers.ParseScheduler(wire.Scheduler, "scheduler", out var scheduler) is { } schedError) return schedError;
        if (Schedulers.ParseFlags(scheduler, wire.Flags, "flags", out var flags) is { } flagError) return flagError;
        var netmask = wire.HasPersistenceNetmask ? wire.PersistenceNetmask : (family == IpFamily.V6 ? 128u : 32u);
        if (Validation.PersistenceNetmask(netmask, family, "persistence_netmask") is { } maskError) return maskError;
        config = new ServiceConfig
        {
            Scheduler = scheduler,
            Flags = flags,
            PersistenceTimeout = wire.PersistenceTimeout,
            PersistenceNetmask = (byte)netmask,
            OnePacket = wire.OnePacket,
        };
        return null;
    }

    public static VirtualService.Types.Key ToWire(Model.ServiceKey model)
    {
        var key = new VirtualService.Types.Key { Protocol = (Protocol)(int)model.Protocol };
        if (model.IsFirewallMark)
        {
            key.Fwmark = model.FirewallMark;
            key.Family = model.Family == IpFamily.V6 ? AddressFamily.Inet6 : AddressFamily.Inet;
        }
        else
        {
            key.Ip = model.Address!.ToString();
            key.Port = model.Port;
        }
        return key;
    }

    public static RealServer.Types.Key ToWire(Model.RealServerKey model) => new() { Ip = model.Address.ToString(), Port = model.Port };

    public static VirtualService ToWire(Model.VirtualService model)
    {
        var key = ToWire(model.Key);
        var config = new VirtualService.Types.Config { Scheduler = model.Config.Scheduler };
        config.Flags.AddRange(Schedulers.AliasNames(model.Config.Flags));
        // Only write extension fields that differ from defaults, so plain services stay byte-identical
        // to what the original merlin writes.
        if (model.Config.PersistenceTimeout != 0) config.PersistenceTimeout = model.Config.PersistenceTimeout;
        var fullMask = model.Key.Family == IpFamily.V6 ? 128 : 32;
        if (model.Config.PersistenceNetmask != fullMask) config.PersistenceNetmask = model.Config.PersistenceNetmask;
        if (model.Config.OnePacket) config.OnePacket = true;
        return new VirtualService { Id = model.Id, Key = key, Config = config };
    }

    /// <summary>Validates a real server on its own; family agreement with the service is checked by the caller.</summary>
    public static ValidationError? TryToModel(RealServer? wire, out Model.RealServer? model)
    {
        model = null;
        if (wire is null) return new("server", "required");
        if (Validation.Id(wire.ServiceID, "serviceID") is { } idError) return idError;
        if (wire.Key is null) return new("key", "required (ip and port)");
        if (Validation.Address(wire.Key.Ip, "key.ip", out var address) is { } ipError) return ipError;
        if (Validation.Port(wire.Key.Port, "key.port") is { } portError) return portError;
        if (wire.Config is null) return new("config", "required (weight and forward method)");
        if (TryServerConfig(wire.Config, out var config) is { } configError) return configError.Under("config");
        if (TryHealthCheck(wire.HealthCheck, out var health) is { } healthError) return healthError.Under("health_check");
        DateTimeOffset? drainDeadline = null;
        if (wire.DrainDeadline is { } deadline)
        {
            try { drainDeadline = deadline.ToDateTimeOffset(); }
            catch (InvalidOperationException) { return new("drain_deadline", $"{deadline.Seconds}s {deadline.Nanos}ns is not a valid time (0001-01-01 to 9999-12-31 UTC)"); }
        }
        model = new Model.RealServer(wire.ServiceID, new RealServerKey(address!, (ushort)wire.Key.Port), config!, health!) { DrainDeadline = drainDeadline };
        return null;
    }

    public static Model.RealServer ToModel(RealServer wire) =>
        TryToModel(wire, out var model) is { } error ? throw new ValidationException(error) : model!;

    private static ValidationError? TryServerConfig(RealServer.Types.Config wire, out RealServerConfig? config)
    {
        config = null;
        if (wire.Weight is null) return new("weight", "required (0-2147483647)");
        if (Validation.Weight(wire.Weight.Value, "weight") is { } weightError) return weightError;
        var forward = wire.Forward switch
        {
            Wire.ForwardMethod.Route => Model.ForwardMethod.Route,
            Wire.ForwardMethod.Tunnel => Model.ForwardMethod.Tunnel,
            Wire.ForwardMethod.Masq => Model.ForwardMethod.Masq,
            Wire.ForwardMethod.UnsetForwardMethod => (Model.ForwardMethod?)null,
            _ => null,
        };
        if (forward is null)
        {
            return wire.Forward == Wire.ForwardMethod.UnsetForwardMethod
                ? new("forward", "required (ROUTE, TUNNEL or MASQ)")
                : new("forward", $"{(int)wire.Forward} is not a forward method (ROUTE, TUNNEL or MASQ)");
        }
        var tunnelType = Model.TunnelType.Ipip;
        ushort tunnelPort = 0;
        var tunnelFlags = Model.TunnelFlags.None;
        if (forward == Model.ForwardMethod.Tunnel)
        {
            tunnelType = wire.TunnelType switch
            {
                Wire.TunnelType.Ipip => Model.TunnelType.Ipip,
                Wire.TunnelType.Gue => Model.TunnelType.Gue,
                Wire.TunnelType.Gre => Model.TunnelType.Gre,
                _ => (Model.TunnelType)(-1),
            };
            if ((int)tunnelType < 0) return new("tunnel_type", $"{(int)wire.TunnelType} is not a tunnel type (IPIP, GUE or GRE)");
            if (tunnelType == Model.TunnelType.Gue)
            {
                if (Validation.Port(wire.TunnelPort, "tunnel_port") is { } tpError) return tpError with { Reason = tpError.Reason + " for GUE" };
                tunnelPort = (ushort)wire.TunnelPort;
            }
            else if (wire.TunnelPort != 0) return new("tunnel_port", $"only GUE tunnels have a port, not {tunnelType.ToString().ToUpperInvariant()}");
            foreach (var flag in wire.TunnelFlags)
            {
                switch (flag.Trim().ToLowerInvariant())
                {
                    case "csum": tunnelFlags |= Model.TunnelFlags.Csum; break;
                    case "remcsum": tunnelFlags |= Model.TunnelFlags.RemoteCsum; break;
                    case "nocsum" or "": break;
                    default: return new("tunnel_flags", $"{Validation.Quote(flag)} is not a tunnel flag (csum, remcsum, nocsum)");
                }
            }
            if (tunnelFlags != Model.TunnelFlags.None && tunnelType == Model.TunnelType.Ipip)
                return new("tunnel_flags", "IPIP tunnels take no checksum flags");
        }
        else if (wire.HasTunnelType || wire.HasTunnelPort || wire.TunnelFlags.Count > 0)
        {
            return new("tunnel_type", "tunnel settings need forward TUNNEL");
        }
        if (Validation.Thresholds(wire.UpperThreshold, wire.LowerThreshold, "") is { } thError)
            return thError with { Field = thError.Field.TrimStart('.') };
        config = new RealServerConfig
        {
            Weight = wire.Weight.Value,
            Forward = forward.Value,
            TunnelType = tunnelType,
            TunnelPort = tunnelPort,
            TunnelFlags = tunnelFlags,
            UpperThreshold = wire.UpperThreshold,
            LowerThreshold = wire.LowerThreshold,
        };
        return null;
    }

    private static ValidationError? TryHealthCheck(RealServer.Types.HealthCheck? wire, out Model.HealthCheck? health)
    {
        health = Model.HealthCheck.None;
        var endpoint = wire?.Endpoint ?? "";
        if (wire is null || endpoint.Length == 0) return null;
        if (Validation.HealthEndpoint(endpoint, "endpoint", out var uri) is { } endpointError) return endpointError;
        var period = TimeSpan.Zero;
        if (wire.Period is not null && TryDuration(wire.Period, "period", out period) is { } periodError) return periodError;
        var timeout = TimeSpan.Zero;
        if (wire.Timeout is not null && TryDuration(wire.Timeout, "timeout", out timeout) is { } timeoutError) return timeoutError;
        if (Validation.HealthTiming(period, timeout, wire.UpThreshold, wire.DownThreshold, "") is { } timingError)
            return timingError with { Field = timingError.Field.TrimStart('.') };
        health = new Model.HealthCheck
        {
            Endpoint = uri, Period = period, Timeout = timeout,
            UpThreshold = wire.UpThreshold, DownThreshold = wire.DownThreshold,
        };
        return null;
    }

    /// <summary>
    /// A protobuf Duration as a TimeSpan. One that is not normalized (<c>{seconds: 1, nanos: -1}</c>,
    /// <c>{nanos: 1000000000}</c>) or beyond ±10,000 years (<c>{seconds: 9223372036854775807}</c>) is refused
    /// naming <paramref name="field"/>: <see cref="Duration.ToTimeSpan"/> throws on those.
    /// </summary>
    public static ValidationError? TryDuration(Duration wire, string field, out TimeSpan value)
    {
        value = TimeSpan.Zero;
        try
        {
            value = wire.ToTimeSpan();
            return null;
        }
        catch (Exception e) when (e is InvalidOperationException or OverflowException)
        {
            return new(field, $"{{seconds: {wire.Seconds}, nanos: {wire.Nanos}}} is not a valid duration " +
                              "(seconds within ±315576000000, nanos within ±999999999 and of the same sign)");
        }
    }

    public static RealServer ToWire(Model.RealServer model)
    {
        var c = model.Config;
        var config = new RealServer.Types.Config { Weight = c.Weight, Forward = (ForwardMethod)(int)c.Forward };
        if (c.Forward == Model.ForwardMethod.Tunnel && (c.TunnelType != Model.TunnelType.Ipip || c.TunnelFlags != Model.TunnelFlags.None))
        {
            config.TunnelType = (TunnelType)(int)c.TunnelType;
            if (c.TunnelPort != 0) config.TunnelPort = c.TunnelPort;
            if (c.TunnelFlags.HasFlag(Model.TunnelFlags.Csum)) config.TunnelFlags.Add("csum");
            if (c.TunnelFlags.HasFlag(Model.TunnelFlags.RemoteCsum)) config.TunnelFlags.Add("remcsum");
        }
        if (c.UpperThreshold != 0) config.UpperThreshold = c.UpperThreshold;
        if (c.LowerThreshold != 0) config.LowerThreshold = c.LowerThreshold;
        var health = new RealServer.Types.HealthCheck();
        if (model.HealthCheck.Endpoint is { } uri)
        {
            health.Endpoint = FormatEndpoint(uri);
            health.Period = Duration.FromTimeSpan(model.HealthCheck.Period);
            health.Timeout = Duration.FromTimeSpan(model.HealthCheck.Timeout);
            health.UpThreshold = model.HealthCheck.UpThreshold;
            health.DownThreshold = model.HealthCheck.DownThreshold;
        }
        var wire = new RealServer
        {
            ServiceID = model.ServiceId,
            Key = ToWire(model.Key),
            Config = config,
            HealthCheck = health,
        };
        // Only while draining: a server that is not stays byte-identical to the original merlin's record.
        if (model.DrainDeadline is { } deadline) wire.DrainDeadline = Timestamp.FromDateTimeOffset(deadline);
        return wire;
    }

    /// <summary>Back to the host-less form: <c>http://:8080/health</c>.</summary>
    public static string FormatEndpoint(Uri uri) => $"{uri.Scheme}://:{uri.Port}{uri.PathAndQuery}";
}
