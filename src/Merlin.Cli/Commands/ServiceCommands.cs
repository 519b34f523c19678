using System.CommandLine;
using System.CommandLine.Parsing;
using System.Net;
using StringValue = Google.Protobuf.WellKnownTypes.StringValue;
using Merlin.Cli.Parsing;
using Wire = Merlin.Contracts;
using Merlin.Model;

namespace Merlin.Cli.Commands;

/// <summary><c>meradm service add|edit|del</c>.</summary>
internal static class ServiceCommands
{
    public static Command Create(CliContext ctx)
    {
        var command = new Command("service", "Add, edit or delete a virtual service");
        command.Aliases.Add("svc");
        command.Subcommands.Add(Add(ctx));
        command.Subcommands.Add(Edit(ctx));
        command.Subcommands.Add(Delete(ctx));
        return command;
    }

    private static Argument<string> IdArgument() => new("id") { Description = "Service id (letters, digits and - _ . : @)" };

    /// <summary>The config options shared by add and edit.</summary>
    private sealed class ConfigOptions
    {
        public readonly Option<string> Scheduler = new("--scheduler", "-s")
        {
            Description = "IPVS scheduler: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh",
            HelpName = "scheduler",
        };
        public readonly Option<string[]> Flags = Parsers.List("--flags", ["-b"],
            "Scheduler flags, comma-separated: sh-port, sh-fallback (sh), mh-port, mh-fallback (mh); on edit, \"\" clears them", "flags");
        public readonly Option<uint> Persistence = Parsers.Option<uint>("--persistence", ["-p"],
            "Keep a client on its server for this many seconds (300 or 5m); 0 = not persistent",
            Values.TryParseSeconds, "seconds");
        public readonly Option<uint> PersistenceNetmask = Parsers.Option<uint>("--persistence-netmask", ["-M"],
            "Group clients for persistence by this prefix length (24 = one /24 sticks to one server)",
            Values.TryParsePrefixLength, "bits");
        public readonly Option<bool> OnePacket = new("--one-packet")
        {
            Description = "One-packet scheduling (UDP: schedule every datagram); --one-packet false turns it off",
        };

        public void AddTo(Command command)
        {
            command.Options.Add(Scheduler);
            command.Options.Add(Flags);
            command.Options.Add(Persistence);
            command.Options.Add(PersistenceNetmask);
            command.Options.Add(OnePacket);
        }

        public bool AnyGiven(CommandResult result) =>
            new Option[] { Scheduler, Flags, Persistence, PersistenceNetmask, OnePacket }.Any(o => result.IsGiven(o));

        /// <summary>Only what was given: unset fields tell the daemon to keep what it has.</summary>
        public Wire.VirtualService.Types.Config ToWire(ParseResult result, bool forEdit)
        {
            var config = new Wire.VirtualService.Types.Config { Scheduler = result.GetValue(Scheduler) ?? "" };
            if (result.IsGiven(Flags))
            {
                var flags = Values.SplitList(result.GetValue(Flags) ?? []);
                // The wire list has no presence: on edit, `-b ""` sends one empty name, which the daemon
                // reads as "replace the flags with none" (an empty name is no flag).
                if (flags.Count == 0 && forEdit) flags.Add("");
                config.Flags.AddRange(flags);
            }
            if (result.IsGiven(Persistence)) config.PersistenceTimeout = result.GetValue(Persistence);
            if (result.IsGiven(PersistenceNetmask)) config.PersistenceNetmask = result.GetValue(PersistenceNetmask);
            if (result.IsGiven(OnePacket)) config.OnePacket = result.GetValue(OnePacket);
            return config;
        }
    }

    private static Command Add(CliContext ctx)
    {
        var id = IdArgument();
        var protocol = new Argument<Wire.Protocol?>("protocol")
        {
            Description = "tcp, udp or sctp",
            HelpName = "protocol",
            Arity = ArgumentArity.ZeroOrOne,
            CustomParser = r =>
            {
                if (r.Tokens.Count == 0) return null;
                var text = r.Tokens[0].Value;
                if (Parsers.TryParseProtocol(text, out var p, out var error)) return p;
                r.AddError(text.Contains(':')
                    ? $"<protocol>: {Validation.Quote(text)} is not tcp, udp or sctp (the protocol comes before ip:port)"
                    : $"<protocol>: {error}");
                return null;
            },
        };
        var endpoint = Parsers.EndpointArgument("Virtual IP and port: 10.0.0.1:80 or [2001:db8::1]:80");
        endpoint.Arity = ArgumentArity.ZeroOrOne;
        var fwmark = Parsers.UInt("--fwmark", [], "Match packets by this firewall mark instead of protocol and ip:port", 1, uint.MaxValue, "mark");
        var ipv6 = new Option<bool>("--ipv6", "-6") { Description = "With --fwmark: an IPv6 service (IPv4 otherwise)" };
        var config = new ConfigOptions();
        config.Scheduler.Required = true;

        var command = new Command("add", "Add a virtual service: add <id> <tcp|udp|sctp> <ip:port> -s <scheduler>, or add <id> --fwmark <mark> -s <scheduler>");
        command.Arguments.Add(id);
        command.Arguments.Add(protocol);
        command.Arguments.Add(endpoint);
        command.Options.Add(fwmark);
        command.Options.Add(ipv6);
        config.AddTo(command);
        command.Validators.Add(r =>
        {
            var isFwmark = r.IsGiven(fwmark);
            var hasProtocol = r.GetResult(protocol) is { Tokens.Count: > 0 };
            var hasEndpoint = r.GetResult(endpoint) is { Tokens.Count: > 0 };
            if (isFwmark && hasEndpoint)
                r.AddError("--fwmark: a firewall-mark service has no ip:port");
            else if (!isFwmark && !(hasProtocol && hasEndpoint))
                r.AddError("service add needs <protocol> and <ip:port> (e.g. tcp 10.0.0.1:80), or --fwmark <mark>");
            else if (!isFwmark && r.IsGiven(ipv6))
                r.AddError("--ipv6: only for --fwmark services; an ip:port service takes its family from the address");
        });
        command.SetAction((result, ct) =>
        {
            var key = new Wire.VirtualService.Types.Key();
            if (result.IsGiven(fwmark))
            {
                key.Fwmark = result.GetValue(fwmark);
                key.Family = result.GetValue(ipv6) ? Wire.AddressFamily.Inet6 : Wire.AddressFamily.Inet;
                if (result.GetValue(protocol) is { } p) key.Protocol = p;
            }
            else
            {
                var vip = result.GetValue(endpoint)!;
                key.Ip = vip.Address.ToString();
                key.Port = (uint)vip.Port;
                key.Protocol = result.GetValue(protocol)!.Value;
            }
            var service = new Wire.VirtualService { Id = result.GetValue(id)!, Key = key, Config = config.ToWire(result, forEdit: false) };
            return ctx.CallAsync(result, $"add service {service.Id}", async (client, options) => await client.CreateServiceAsync(service, options), ct);
        });
        return command;
    }

    private static Command Edit(CliContext ctx)
    {
        var id = IdArgument();
        var config = new ConfigOptions();
        var command = new Command("edit", "Change a service's scheduler, flags or persistence (only what is given; the key cannot change)");
        command.Arguments.Add(id);
        config.AddTo(command);
        command.Validators.Add(r =>
        {
            if (!config.AnyGiven(r))
                r.AddError("service edit: nothing to change (give -s, -b, --persistence, --persistence-netmask or --one-packet)");
        });
        command.SetAction((result, ct) =>
        {
            var service = new Wire.VirtualService { Id = result.GetValue(id)!, Config = config.ToWire(result, forEdit: true) };
            return ctx.CallAsync(result, $"edit service {service.Id}", async (client, options) => await client.UpdateServiceAsync(service, options), ct);
        });
        return command;
    }

    private static Command Delete(CliContext ctx)
    {
        var id = IdArgument();
        var command = new Command("del", "Delete a service and all of its servers");
        command.Aliases.Add("delete");
        command.Aliases.Add("rm");
        command.Arguments.Add(id);
        command.SetAction((result, ct) =>
        {
            var serviceId = result.GetValue(id)!;
            return ctx.CallAsync(result, $"delete service {serviceId}",
                async (client, options) => await client.DeleteServiceAsync(new StringValue { Value = serviceId }, options), ct);
        });
        return command;
    }

    internal static string Format(IPEndPoint endpoint) => Model.Endpoints.Format(endpoint.Address, (ushort)endpoint.Port);
}
