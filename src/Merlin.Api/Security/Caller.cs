using System.Net;

namespace Merlin.Api.Security;

/// <summary>What a caller may do. <see cref="AccessPolicy"/> says which methods each role may call.</summary>
public enum Role
{
    /// <summary>Anything.</summary>
    Admin,

    /// <summary>Create, update and delete real servers whose IP is one of its own; read List and Status.</summary>
    RealServer,
}

/// <summary>
/// Who made a call, as established by <see cref="CallerAuthenticator"/>: a role, the addresses a real
/// server may manage, and the credential that proved it (for messages and logs; never a secret).
/// </summary>
public sealed record Caller(Role Role, IReadOnlyList<IPAddress> Addresses, string Credential)
{
    /// <summary>A caller on the daemon's local Unix socket: the socket file's permissions are the authentication.</summary>
    public static Caller LocalSocket { get; } = new(Role.Admin, [], "the local Unix socket");

    /// <summary>A caller of an API that asks for no credentials (plain loopback, or --allow-insecure).</summary>
    public static Caller Anonymous { get; } = new(Role.Admin, [], "no credentials; this API requires none");

    public static string Name(Role role) => role == Role.Admin ? "admin" : "realserver";

    public static bool TryParseRole(string text, out Role role)
    {
        (var ok, role) = text switch
        {
            "admin" => (true, Role.Admin),
            "realserver" => (true, Role.RealServer),
            _ => (false, Role.Admin),
        };
        return ok;
    }

    /// <summary><c>realserver 198.18.1.21 (client certificate CN=agent-21)</c></summary>
    public override string ToString() => Addresses.Count == 0
        ? $"{Name(Role)} ({Credential})"
        : $"{Name(Role)} {string.Join(",", Addresses)} ({Credential})";
}
