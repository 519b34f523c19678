using System.Net;
using System.Security.Cryptography;
using System.Text;
using Merlin.Model;

namespace Merlin.Api.Security;

/// <summary>
/// Bearer tokens for operators without a PKI (the daemon's <c>--tokens-file</c>). One token a line:
/// <c>token role [ip…]</c>, where role is <c>admin</c> or <c>realserver</c> and a real server's token
/// names the addresses it may manage; <c>#</c> starts a comment. Clients send
/// <c>authorization: Bearer &lt;token&gt;</c>. Only SHA-256 digests are kept, and a token is named in
/// messages by its line, never by its text.
/// </summary>
public sealed class BearerTokens
{
    /// <summary>Shorter tokens can be guessed; <c>openssl rand -hex 32</c> makes a good one.</summary>
    public const int MinimumLength = 16;

    private readonly Dictionary<string, Caller> _callers;

    private BearerTokens(Dictionary<string, Caller> callers) => _callers = callers;

    public int Count => _callers.Count;

    /// <summary>Parses a tokens file; a bad line is a <see cref="FormatException"/> naming the line and why.</summary>
    public static BearerTokens Parse(string text)
    {
        var callers = new Dictionary<string, Caller>(StringComparer.Ordinal);
        var lineNumber = 0;
        foreach (var raw in text.Split('\n'))
        {
            lineNumber++;
            var hash = raw.IndexOf('#');
            var fields = (hash < 0 ? raw : raw[..hash]).Split([' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 0) continue;
            if (fields.Length < 2)
                throw new FormatException($"line {lineNumber}: expected \"token role [ip…]\"");
            if (fields[0].Length < MinimumLength)
                throw new FormatException($"line {lineNumber}: the token is shorter than {MinimumLength} characters (make one with `openssl rand -hex 32`)");
            if (!Caller.TryParseRole(fields[1], out var role))
                throw new FormatException($"line {lineNumber}: {Validation.Quote(fields[1])} is not a role (admin or realserver)");
            var addresses = new List<IPAddress>();
            foreach (var field in fields.Skip(2))
                addresses.Add(IPAddress.TryParse(field, out var address)
                    ? address
                    : throw new FormatException($"line {lineNumber}: {Validation.Quote(field)} is not an IP address"));
            if (role == Role.RealServer && addresses.Count == 0)
                throw new FormatException($"line {lineNumber}: a realserver token needs the IP it may manage (\"token realserver 198.18.1.21\")");
            if (role == Role.Admin && addresses.Count != 0)
                throw new FormatException($"line {lineNumber}: an admin token takes no IP (admin may manage every server)");
            if (!callers.TryAdd(Digest(fields[0]), new Caller(role, addresses, $"bearer token on line {lineNumber} of the tokens file")))
                throw new FormatException($"line {lineNumber}: the same token as an earlier line");
        }
        return new BearerTokens(callers);
    }

    /// <summary>The caller a token stands for, or null when it is not in the file.</summary>
    public Caller? Find(string token) => _callers.GetValueOrDefault(Digest(token));

    // Looking up a digest rather than the token keeps lookups from leaking the token's text through timing.
    private static string Digest(string token) => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(token)));
}
