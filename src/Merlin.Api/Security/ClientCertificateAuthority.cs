using System.Formats.Asn1;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Merlin.Model;

namespace Merlin.Api.Security;

/// <summary>
/// Client certificates as identities. A certificate is accepted when it chains to one of the trusted CA
/// certificates (the daemon's <c>--tls-client-ca</c>), is within its validity period, and allows client
/// authentication. Its role is one URI SAN <c>merlin:role:admin</c> or <c>merlin:role:realserver</c>
/// (a URI SAN, not the subject's OU, so that no certificate of an existing PKI gains a role by
/// accident); a real server's addresses are its IP SANs.
/// </summary>
public sealed class ClientCertificateAuthority
{
    public const string RoleUriPrefix = "merlin:role:";
    private const string ClientAuthentication = "1.3.6.1.5.5.7.3.2";

    private readonly X509Certificate2Collection _roots = [];
    private readonly X509Certificate2Collection _intermediates = [];
    private readonly TimeProvider _time;

    /// <param name="authorities">The CA certificates: self-signed ones are trust anchors, others intermediates.</param>
    public ClientCertificateAuthority(X509Certificate2Collection authorities, TimeProvider time)
    {
        foreach (var ca in authorities)
            (ca.SubjectName.RawData.AsSpan().SequenceEqual(ca.IssuerName.RawData) ? _roots : _intermediates).Add(ca);
        if (_roots.Count == 0) throw new ArgumentException("no self-signed CA certificate among the trusted authorities", nameof(authorities));
        _time = time;
    }

    /// <summary>The trust anchors' subjects, for the start-up log.</summary>
    public IEnumerable<string> Subjects => _roots.Select(c => c.Subject);

    /// <summary>
    /// The caller a certificate proves. Throws Unauthenticated when it is not trusted (another CA, expired,
    /// not for client authentication, malformed) and PermissionDenied when it is trusted but carries no
    /// usable role; the message names why.
    /// </summary>
    public Caller Identify(X509Certificate2 certificate)
    {
        var name = $"client certificate {certificate.Subject}";
        Verify(certificate, name);

        IReadOnlyList<string> uris;
        IReadOnlyList<IPAddress> addresses;
        try
        {
            (uris, addresses) = SubjectAlternativeNames(certificate);
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException)
        {
            throw Unauthenticated($"{name} has a malformed subject alternative name: {e.Message}");
        }
        var roles = uris.Where(u => u.StartsWith(RoleUriPrefix, StringComparison.Ordinal)).ToList();
        if (roles.Count != 1)
            throw Denied($"{name} must carry exactly one role as a URI SAN ({RoleUriPrefix}admin or {RoleUriPrefix}realserver); it has {(roles.Count == 0 ? "none" : string.Join(", ", roles))}");
        if (!Caller.TryParseRole(roles[0][RoleUriPrefix.Length..], out var role))
            throw Denied($"{name} has role {Validation.Quote(roles[0])}; known roles are {RoleUriPrefix}admin and {RoleUriPrefix}realserver");
        if (role == Role.RealServer && addresses.Count == 0)
            throw Denied($"{name} has role realserver but no IP SAN: a real server may only manage its own addresses");
        return new Caller(role, role == Role.RealServer ? addresses : [], name);
    }

    private void Verify(X509Certificate2 certificate, string name)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_roots);
        chain.ChainPolicy.ExtraStore.AddRange(_intermediates);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid(ClientAuthentication));
        var now = _time.GetUtcNow();
        chain.ChainPolicy.VerificationTime = now.LocalDateTime;
        try
        {
            if (chain.Build(certificate)) return;
        }
        catch (CryptographicException e)
        {
            throw Unauthenticated($"{name} cannot be verified: {e.Message}");
        }
        var all = chain.ChainStatus.Aggregate(X509ChainStatusFlags.NoError, (f, s) => f | s.Status);
        if (all.HasFlag(X509ChainStatusFlags.UntrustedRoot) || all.HasFlag(X509ChainStatusFlags.PartialChain))
            throw Unauthenticated($"{name} (issuer {certificate.Issuer}) was not issued by the client CA this daemon trusts");
        if (all.HasFlag(X509ChainStatusFlags.NotTimeValid))
        {
            // Name the certificate that is out of date: the client's own, or its CA's.
            var stale = chain.ChainElements.Select(e => e.Certificate).FirstOrDefault(c => now < c.NotBefore || now > c.NotAfter) ?? certificate;
            var whose = stale.Equals(certificate) ? name : $"the CA certificate {stale.Subject} of {name}";
            throw Unauthenticated(now > stale.NotAfter
                ? $"{whose} expired on {stale.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm:ss}Z"
                : $"{whose} is not valid before {stale.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm:ss}Z");
        }
        if (all.HasFlag(X509ChainStatusFlags.NotValidForUsage))
            throw Unauthenticated($"{name} is not valid for client authentication (its extended key usage)");
        throw Unauthenticated($"{name} is not acceptable: {string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Distinct())}");
    }

    /// <summary>The URI and IP address entries of the subject alternative name (RFC 5280 GeneralNames).</summary>
    private static (IReadOnlyList<string> Uris, IReadOnlyList<IPAddress> Addresses) SubjectAlternativeNames(X509Certificate2 certificate)
    {
        var uris = new List<string>();
        var addresses = new List<IPAddress>();
        var extension = certificate.Extensions.FirstOrDefault(e => e.Oid?.Value == "2.5.29.17");
        if (extension is null) return (uris, addresses);
        var names = new AsnReader(extension.RawData, AsnEncodingRules.DER).ReadSequence();
        var uri = new Asn1Tag(TagClass.ContextSpecific, 6);
        var ip = new Asn1Tag(TagClass.ContextSpecific, 7);
        while (names.HasData)
        {
            var tag = names.PeekTag();
            if (tag.HasSameClassAndValue(uri))
                uris.Add(names.ReadCharacterString(UniversalTagNumber.IA5String, uri));
            else if (tag.HasSameClassAndValue(ip))
            {
                var bytes = names.ReadOctetString(ip);
                if (bytes.Length is not (4 or 16)) throw new AsnContentException($"an IP address SAN of {bytes.Length} bytes");
                addresses.Add(new IPAddress(bytes));
            }
            else
                names.ReadEncodedValue();
        }
        return (uris, addresses);
    }

    private static RpcException Unauthenticated(string why) => new(new Status(StatusCode.Unauthenticated, why));

    private static RpcException Denied(string why) => new(new Status(StatusCode.PermissionDenied, why));
}
