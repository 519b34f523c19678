using System.CommandLine;
using System.CommandLine.Parsing;
using Duration = Google.Protobuf.WellKnownTypes.Duration;
using Merlin.Cli.Parsing;
using Wire = Merlin.Contracts;

namespace Merlin.Cli.Commands;

/// <summary><c>meradm server add|edit|del|drain|undrain &lt;serviceID&gt; &lt;ip:port&gt;</c>.</summary>
internal static class ServerCommands
{
    // What `server add --health-endpoint …` uses for timing options left out.
    public static readonly TimeSpan DefaultHealthPeriod = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan DefaultHealthTimeout = TimeSpan.FromSeconds(1);
    public const uint DefaultHealthUp = 2;
    public const uint DefaultHealthDown = 1;

    public static Command Create(CliContext ctx)
    {
        var command = new Command("server", "Add, edit or delete a real server of a service");
        command.Aliases.Add("srv");
        command.Subcommands.Add(AddOrEdit(ctx, edit: false));
        command.Subcommands.Add(AddOrEdit(ctx, edit: true));
        command.Subcommands.Add(Delete(ctx));
        command.Subcommands.Add(Drain(ctx));
        command.Subcommands.Add(Undrain(ctx));
        return command;
    }

    private static Argument<string> ServiceIdArgument() => new("serviceID") { Description = "Id of the service the server belongs to" };

    private static Argument<System.Net.IPEndPoint?> EndpointArgument() =>
        Parsers.EndpointArgument("Real server address and port: 10.0.1.1:80 or [2001:db8::10]:80");

    private sealed class ServerOptions
    {
        public readonly Option<uint> Weight = Parsers.UInt("--weight", ["-w"], "Weight, 0-2147483647 (0 = no new connections)", 0, int.MaxValue);
        public readonly Option<Wire.ForwardMethod> Forward = Parsers.Option<Wire.ForwardMethod>("--forward", ["-f"],
            "Forward method: route (direct server return), tunnel or masq (NAT)", Parsers.TryParseForward, "route|tunnel|masq");
        public readonly Option<Wire.TunnelType> TunnelType = Parsers.Option<Wire.TunnelType>("--tunnel-type", [],
            "With -f tunnel: ipip (default), gue or gre", Parsers.TryParseTunnelType, "ipip|gue|gre");
        public readonly Option<uint> TunnelPort = Parsers.UInt("--tunnel-port", [], "With --tunnel-type gue: the UDP port", 1, 65535, "port");
        public readonly Option<string[]> TunnelFlags = Parsers.List("--tunnel-flags", [],
            "With gue or gre: csum, remcsum or nocsum, comma-separated; \"\" clears them", "flags");
        public readonly Option<uint> Upper = Parsers.UInt("--upper-threshold", ["-x"], "Stop sending new connections above this many (0 = no limit)");
        public readonly Option<uint> Lower = Parsers.UInt("--lower-threshold", ["-y"], "Resume below this many connections (0 = no limit)");
        public readonly Option<string> HealthEndpoint = new("--health-endpoint")
        {
            Description = "Health check, <scheme>://:<port>/<path> on the server's own address (http://:8080/health); \"\" removes the check",
            HelpName = "url",
        };
        public readonly Option<TimeSpan> HealthPeriod = Parsers.Duration("--health-period", "Time between checks (10s)");
        public readonly Option<TimeSpan> HealthTimeout = Parsers.Duration("--health-timeout", "Time a check may take (1s)");
        public readonly Option<uint> HealthUp = Parsers.UInt("--health-up", [], "Passed checks in a row before a server is up (2)", 1);
        public readonly Option<uint> HealthDown = Parsers.UInt("--health-down", [], "Failed checks in a row before a server is down (1)", 1);

        public Option[] Config => [Weight, Forward, TunnelType, TunnelPort, TunnelFlags, Upper, Lower];
        public Option[] HealthTiming => [HealthPeriod, HealthTimeout, HealthUp, HealthDown];

        public void AddTo(Command command)
        {
            foreach (var option in Config) command.Options.Add(option);
            command.Options.Add(HealthEndpoint);
            foreach (var option in HealthTiming) command.Options.Add(option);
        }

        /// <summary>Only what was given, so an edit leaves the rest as the daemon has it.</summary>
        public Wire.RealServer.Types.Config ConfigToWire(ParseResult r)
        {
            var config = new Wire.RealServer.Types.Config();
            if (r.IsGiven(Weight)) config.Weight = r.GetValue(Weight); // a UInt32Value: 0 is sent, absent is not
            if (r.IsGiven(Forward)) config.Forward = r.GetValue(Forward);
            if (r.IsGiven(TunnelType)) config.TunnelType = r.GetValue(TunnelType);
            if (r.IsGiven(TunnelPort)) config.TunnelPort = r.GetValue(TunnelPort);
            if (r.IsGiven(TunnelFlags))
            {
                var flags = Values.SplitList(r.GetValue(TunnelFlags) ?? []);
                // As with scheduler flags, `--tunnel-flags ""` sends one empty name: "replace with none".
                config.TunnelFlags.AddRange(flags.Count == 0 ? [""] : flags);
            }
            if (r.IsGiven(Upper)) config.UpperThreshold = r.GetValue(Upper);
            if (r.IsGiven(Lower)) config.LowerThreshold = r.GetValue(Lower);
            return config;
        }

        /// <summary>
        /// On add, a check gets the default timing for whatever was left out. On edit, only the given
        /// fields are sent; <c>--health-endpoint ""</c> sends a present-but-empty endpoint, which removes the check.
        /// </summary>
        public Wire.RealServer.Types.HealthCheck? HealthToWire(ParseResult r, bool edit)
        {
            var endpointGiven = r.IsGiven(HealthEndpoint);
            var endpoint = endpointGiven ? r.GetValue(HealthEndpoint) ?? "" : null;
            if (!edit && string.IsNullOrEmpty(endpoint)) return null;
            if (edit && !endpointGiven && !HealthTiming.Any(o => r.IsGiven(o))) return null;
            var health = new Wire.RealServer.Types.HealthCheck();
            if (endpoint is not null) health.Endpoint = endpoint;
            if (Given(r, HealthPeriod, out var period) || !edit) health.Period = Duration.FromTimeSpan(period ?? DefaultHealthPeriod);
            if (Given(r, HealthTimeout, out var timeout) || !edit) health.Timeout = Duration.FromTimeSpan(timeout ?? DefaultHealthTimeout);
            if (Given(r, HealthUp, out var up) || !edit) health.UpThreshold = up ?? DefaultHealthUp;
            if (Given(r, HealthDown, out var down) || !edit) health.DownThreshold = down ?? DefaultHealthDown;
            return health;
        }

        private static bool Given<T>(ParseResult r, Option<T> option, out T? value) where T : struct
        {
            value = r.IsGiven(option) ? r.GetValue(option) : null;
            return value is not null;
        }
    }

    private static Command AddOrEdit(CliContext ctx, bool edit)
    {
        var serviceId = ServiceIdArgument();
        var endpoint = EndpointArgument();
        var options = new ServerOptions();
        options.Weight.Required = !edit;
        options.Forward.Required = !edit;
        var command = edit
            ? new Command("edit", "Change a real server (only what is given; -w 0 stops new connections)")
            : new Command("add", "Add a real server to a service");
        command.Arguments.Add(serviceId);
        command.Arguments.Add(endpoint);
        options.AddTo(command);
        command.Validators.Add(r =>
        {
            var endpointGiven = r.IsGiven(options.HealthEndpoint) && r.GetResult(options.HealthEndpoint)!.Tokens is [.., { Value.Length: > 0 }];
            if (edit && !options.Config.Concat([options.HealthEndpoint]).Concat(options.HealthTiming).Any(o => r.IsGiven(o)))
                r.AddError("server edit: nothing to change (give -w, -f, --health-endpoint or another option)");
            else if (!edit && !endpointGiven && options.HealthTiming.FirstOrDefault(o => r.IsGiven(o)) is { } timing)
                r.AddError($"{timing.Name}: needs --health-endpoint");
        });
        command.SetAction((result, ct) =>
        {
            var ep = result.GetValue(endpoint)!;
            var server = new Wire.RealServer
            {
                ServiceID = result.GetValue(serviceId)!,
                Key = new Wire.RealServer.Types.Key { Ip = ep.Address.ToString(), Port = (uint)ep.Port },
                Config = options.ConfigToWire(result),
                HealthCheck = options.HealthToWire(result, edit),
            };
            var what = $"{(edit ? "edit" : "add")} server {ServiceCommands.Format(ep)} of service {server.ServiceID}";
            return ctx.CallAsync(result, what, async (client, callOptions) =>
            {
                if (edit) await client.UpdateServerAsync(server, callOptions);
                else await client.CreateServerAsync(server, callOptions);
            }, ct);
        });
        return command;
    }

    private static Command Drain(CliContext ctx)
    {
        var serviceId = ServiceIdArgument();
        var endpoint = EndpointArgument();
        var period = Parsers.Option<TimeSpan>("--period", ["-p"], "How long established connections may stay before the server is removed (e.g. 300s)",
            (string text, out TimeSpan value, out string? error) =>
            {
                if (!Merlin.Model.Durations.TryParse(text, out value, out error)) return false;
                error = Merlin.Model.Validation.DrainPeriod(value, "--period")?.Reason;
                return error is null;
            }, "duration");
        period.Required = true;
        var command = new Command("drain", "Stop new connections to a real server now, and remove it when the period has passed");
        command.Arguments.Add(serviceId);
        command.Arguments.Add(endpoint);
        command.Options.Add(period);
        command.SetAction((result, ct) =>
        {
            var ep = result.GetValue(endpoint)!;
            var request = new Wire.DrainRequest
            {
                Server = new Wire.RealServer
                {
                    ServiceID = result.GetValue(serviceId)!,
                    Key = new Wire.RealServer.Types.Key { Ip = ep.Address.ToString(), Port = (uint)ep.Port },
                },
                Period = Duration.FromTimeSpan(result.GetValue(period)),
            };
            return ctx.CallAsync(result, $"drain server {ServiceCommands.Format(ep)} of service {request.Server.ServiceID}",
                async (client, callOptions) => await client.DrainServerAsync(request, callOptions), ct);
        });
        return command;
    }

    private static Command Undrain(CliContext ctx) =>
        ByKey(ctx, "undrain", "End a drain before its deadline: the server's configured weight returns",
            "undrain", (client, server, callOptions) => client.UndrainServerAsync(server, callOptions));

    private static Command Delete(CliContext ctx)
    {
        var command = ByKey(ctx, "del", "Remove a real server from a service",
            "delete", (client, server, callOptions) => client.DeleteServerAsync(server, callOptions));
        command.Aliases.Add("delete");
        command.Aliases.Add("rm");
        return command;
    }

    /// <summary>A command that names one server (service ID and ip:port) and makes one call with it.</summary>
    private static Command ByKey(CliContext ctx, string name, string description, string verb,
        Func<Wire.Merlin.MerlinClient, Wire.RealServer, Grpc.Core.CallOptions, Grpc.Core.AsyncUnaryCall<Google.Protobuf.WellKnownTypes.Empty>> call)
    {
        var serviceId = ServiceIdArgument();
        var endpoint = EndpointArgument();
        var command = new Command(name, description);
        command.Arguments.Add(serviceId);
        command.Arguments.Add(endpoint);
        command.SetAction((result, ct) =>
        {
            var ep = result.GetValue(endpoint)!;
            var server = new Wire.RealServer
            {
                ServiceID = result.GetValue(serviceId)!,
                Key = new Wire.RealServer.Types.Key { Ip = ep.Address.ToString(), Port = (uint)ep.Port },
            };
            return ctx.CallAsync(result, $"{verb} server {ServiceCommands.Format(ep)} of service {server.ServiceID}",
                async (client, callOptions) => await call(client, server, callOptions), ct);
        });
        return command;
    }
}
