using System.CommandLine;
using System.CommandLine.Parsing;
using System.Net;
using Merlin.Model;
using Wire = Merlin.Contracts;

namespace Merlin.Cli.Parsing;

/// <summary>
/// System.CommandLine parsers for meradm's value types. A bad value becomes a parse error (exit 2)
/// that starts with the option or argument it came from, e.g. <c>&lt;ip:port&gt;: "10.0.0.1" is not ip:port</c>.
/// </summary>
internal static class Parsers
{
    public static Argument<IPEndPoint?> EndpointArgument(string description) => new("ip:port")
    {
        Description = description,
        CustomParser = r => Single(r, "<ip:port>", (string text, out IPEndPoint? value, out string? error) =>
        {
            value = Endpoints.TryParse(text, out var address, out var port, out error) ? new IPEndPoint(address, port) : null;
            return value is not null;
        }),
    };

    public static Option<T> Option<T>(string name, string[] aliases, string description, TryParse<T> parse, string? helpName = null)
    {
        var option = new Option<T>(name, aliases) { Description = description, HelpName = helpName };
        option.CustomParser = r => Single(r, name, parse);
        return option;
    }

    public static Option<uint> UInt(string name, string[] aliases, string description, uint min = 0, uint max = uint.MaxValue, string helpName = "N") =>
        Option(name, aliases, description, (string text, out uint value, out string? error) => Values.TryParseUInt(text, min, max, out value, out error), helpName);

    public static Option<TimeSpan> Duration(string name, string description, bool positive = true) =>
        Option(name, [], description, (string text, out TimeSpan value, out string? error) =>
        {
            if (!Durations.TryParse(text, out value, out error)) return false;
            if (positive && value <= TimeSpan.Zero)
            {
                error = $"{Validation.Quote(text)} must be longer than zero";
                return false;
            }
            return true;
        }, "duration");

    /// <summary>A comma-separated list; the option may also be repeated.</summary>
    public static Option<string[]> List(string name, string[] aliases, string description, string helpName) =>
        new(name, aliases)
        {
            Description = description,
            HelpName = helpName,
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
            CustomParser = r => r.Tokens.Select(t => t.Value).ToArray(),
        };

    public static bool TryParseProtocol(string text, out Wire.Protocol protocol, out string? error)
    {
        (protocol, error) = text.Trim().ToLowerInvariant() switch
        {
            "tcp" => (Wire.Protocol.Tcp, null),
            "udp" => (Wire.Protocol.Udp, (string?)null),
            "sctp" => (Wire.Protocol.Sctp, null),
            _ => (Wire.Protocol.UnsetProtocol, $"{Validation.Quote(text)} is not tcp, udp or sctp"),
        };
        return error is null;
    }

    public static bool TryParseForward(string text, out Wire.ForwardMethod forward, out string? error)
    {
        // ipvsadm's words for the same methods are accepted too: dr (gatewaying), nat (masquerading), ipip.
        (forward, error) = text.Trim().ToLowerInvariant() switch
        {
            "route" or "dr" => (Wire.ForwardMethod.Route, null),
            "tunnel" or "ipip" => (Wire.ForwardMethod.Tunnel, (string?)null),
            "masq" or "nat" => (Wire.ForwardMethod.Masq, null),
            _ => (Wire.ForwardMethod.UnsetForwardMethod, $"{Validation.Quote(text)} is not route, tunnel or masq"),
        };
        return error is null;
    }

    public static bool TryParseTunnelType(string text, out Wire.TunnelType type, out string? error)
    {
        (type, error) = text.Trim().ToLowerInvariant() switch
        {
            "ipip" => (Wire.TunnelType.Ipip, null),
            "gue" => (Wire.TunnelType.Gue, (string?)null),
            "gre" => (Wire.TunnelType.Gre, null),
            _ => (Wire.TunnelType.Ipip, $"{Validation.Quote(text)} is not ipip, gue or gre"),
        };
        return error is null;
    }

    public delegate bool TryParse<T>(string text, out T value, out string? error);

    private static T Single<T>(ArgumentResult result, string name, TryParse<T> parse)
    {
        if (result.Tokens.Count == 0) return default!;
        var text = result.Tokens[^1].Value;
        if (parse(text, out var value, out var error)) return value;
        result.AddError($"{name}: {error}");
        return default!;
    }
}
